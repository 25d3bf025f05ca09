"""The distribution as a user gets it: `docker-etcd-sidekick` (the name `sidekick` on the
package index is an unrelated library whose import package is also `sidekick`), built as an
sdist and a wheel with `python -m build` (the wheel from the sdist, so the sdist is complete),
its metadata checked, the wheel installed into a fresh venv and its command run from there.
"""

from __future__ import annotations

import email
import email.message
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import sidekick
from tests.conftest import missing

pytestmark = pytest.mark.integration  # `python -m build` and pip fetch from the package index

ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "docker-etcd-sidekick"
FILE_NAME = "docker_etcd_sidekick"  # the name as it is spelt in file names


def _run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(name="dists", scope="module")
def _dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build` of the checkout: {"sdist": ..., "wheel": ...}."""
    try:
        import build  # noqa: F401, PLC0415
    except ImportError:
        missing("no `build` module: pip install build (in the test extra)")
    out = tmp_path_factory.mktemp("dist")
    proc = _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sdists = sorted(out.glob("*.tar.gz"))
    wheels = sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


def _metadata(text: str) -> email.message.Message:
    return email.message_from_string(text)


class TestDistribution:
    """The sdist and the wheel carry our name, our version, our dependencies, our command."""

    def test_file_names(self, dists: dict[str, Path]) -> None:
        """docker_etcd_sidekick-VERSION.tar.gz and docker_etcd_sidekick-VERSION-py3-none-any.whl."""
        version = sidekick.__version__
        assert dists["sdist"].name == f"{FILE_NAME}-{version}.tar.gz"
        assert dists["wheel"].name == f"{FILE_NAME}-{version}-py3-none-any.whl"

    def test_wheel_metadata(self, dists: dict[str, Path]) -> None:
        """Name, version, Python, the dependencies of pyproject.toml, the README as the long
        description, the `sidekick` command, and only the `sidekick` package inside."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        info = f"{FILE_NAME}-{sidekick.__version__}.dist-info"
        with zipfile.ZipFile(dists["wheel"]) as wheel:
            names = wheel.namelist()
            meta = _metadata(wheel.read(f"{info}/METADATA").decode())
            entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        assert meta["Name"] == DIST_NAME == project["name"]
        assert meta["Version"] == sidekick.__version__
        assert meta["Requires-Python"] == project["requires-python"]
        assert meta["Summary"] == project["description"]
        assert meta["Description-Content-Type"] == "text/markdown"
        payload = meta.get_payload()
        assert isinstance(payload, str) and payload.startswith("# sidekick\n")
        required = sorted(r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r)
        assert [r.split(">")[0].split("<")[0] for r in required] == sorted(
            r.split(">")[0].split("<")[0] for r in project["dependencies"]
        )
        assert "[console_scripts]\nsidekick = sidekick.cli:main" in entry_points
        assert "sidekick/templates/nginx.conf.j2" in names
        assert {n.split("/")[0] for n in names} == {"sidekick", info}
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    def test_sdist_metadata(self, dists: dict[str, Path]) -> None:
        """The sdist's PKG-INFO says the same name and version, and it holds the sources."""
        top = f"{FILE_NAME}-{sidekick.__version__}"
        with tarfile.open(dists["sdist"]) as sdist:
            names = sdist.getnames()
            pkg_info = sdist.extractfile(f"{top}/PKG-INFO")
            assert pkg_info is not None
            meta = _metadata(pkg_info.read().decode())
        assert (meta["Name"], meta["Version"]) == (DIST_NAME, sidekick.__version__)
        for path in ("pyproject.toml", "README.md", "sidekick/cli.py", "units/sidekick.service"):
            assert f"{top}/{path}" in names, path


class TestInstalledWheel:
    """The wheel in a fresh venv: `sidekick --version` and `sidekick doctor --help` run."""

    def test_runs_from_a_fresh_venv(self, dists: dict[str, Path], tmp_path: Path) -> None:
        venv = tmp_path / "venv"
        assert _run(sys.executable, "-m", "venv", venv).returncode == 0
        pip = _run(
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            dists["wheel"],
        )
        assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
        version = _run(venv / "bin" / "sidekick", "--version", timeout=60)
        assert (version.returncode, version.stdout.strip()) == (
            0,
            f"sidekick {sidekick.__version__}",
        )
        doctor = _run(venv / "bin" / "sidekick", "doctor", "--help", timeout=60)
        assert doctor.returncode == 0, doctor.stderr
        assert "Usage: sidekick doctor" in doctor.stdout
        shown = _run(venv / "bin" / "python", "-m", "pip", "show", DIST_NAME, timeout=60)
        assert f"Name: {DIST_NAME}" in shown.stdout
        other = _run(venv / "bin" / "python", "-m", "pip", "show", "sidekick", timeout=60)
        assert other.returncode != 0, "no distribution called sidekick is installed"
