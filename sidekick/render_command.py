"""`sidekick render`: its options, parsed and handed to sidekick.render (imported inside the
command: jinja2 only for it), and its errors turned into exit codes.

Runs on: the main thread, which then runs the renderer's watch; the metrics server answers on
threads of its own.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from sidekick.config import Config, ConfigError, parse_address
from sidekick.metrics import MetricsServer
from sidekick.options import AGENT_ONLY, EXIT_ETCD, EXIT_NOTHING, fail, make_store, with_config
from sidekick.prom import Registry


def _health_server(
    metrics_address: str | None,
    health: Callable[[], tuple[bool, str]],
    registry: Registry,
) -> MetricsServer | None:
    """/healthz and /metrics on --metrics-address, started; None without one."""
    if metrics_address is None:
        return None
    try:
        address = parse_address(metrics_address, "--metrics-address")
        server = MetricsServer(address, registry, health)
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--metrics-address: cannot listen on {metrics_address}: {exc.strerror}")
    server.start()
    return server


def _option_name(ctx: typer.Context, param: str, flag: str, envvar: str) -> str:
    """The flag, or the variable when the value came from the environment (for error lines)."""
    source = ctx.get_parameter_source(param)
    return envvar if source is not None and source.name == "ENVIRONMENT" else flag


@with_config(
    without=AGENT_ONLY
    | {"ttl", "host_ip", "all_containers", "filters", "key_template", "value_template", "node"}
    | {"address", "network"}
)
def render(
    config: Config,
    ctx: typer.Context,
    *,
    dest: Annotated[
        Path, typer.Option("--dest", help="The file to write, e.g. /etc/nginx/nginx.conf.")
    ],
    template: Annotated[
        Path | None,
        typer.Option(
            "--template",
            help="Jinja2 template. (default: the shipped nginx template for upstream backend)",
            show_default=False,
        ),
    ] = None,
    variables: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A template variable NAME=VALUE (repeatable).", show_default=False
        ),
    ] = None,
    check_cmd: Annotated[
        str | None,
        typer.Option(
            "--check-cmd",
            help="Shell command run on the new file, named {src}, before it goes live "
            "(e.g. 'nginx -t -c {src}').",
            show_default=False,
        ),
    ] = None,
    reload_cmd: Annotated[
        str | None,
        typer.Option(
            "--reload-cmd", help="Shell command run after a new file went live.", show_default=False
        ),
    ] = None,
    reload_signal: Annotated[
        str | None,
        typer.Option(
            "--reload-signal",
            help="Signal (e.g. HUP) sent to --reload-container.",
            show_default=False,
        ),
    ] = None,
    reload_container: Annotated[
        str | None,
        typer.Option(
            "--reload-container",
            help="Container that gets --reload-signal through the Docker API.",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="Octal mode of the file.")] = "0644",
    watch_timeout: Annotated[
        float,
        typer.Option(
            "--watch-timeout",
            help="Seconds of silence after which the watch is opened again from the last revision.",
        ),
    ] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="Render once and exit.")] = False,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            "--metrics-address",
            envvar="SIDEKICK_RENDER_METRICS_ADDRESS",
            help="Serve Prometheus /metrics and /healthz (503 while the check or the reload "
            "fails) on HOST:PORT.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            envvar="SIDEKICK_RENDER_WAIT",
            metavar="MIN[:MAX]",
            help="Render once no change came for MIN seconds, holding none longer than MAX "
            "(default 4 x MIN); 0 renders at once. (default: 0.05)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Render a template from the values under --prefix each time they change (like confd)."""
    from sidekick import render as rendering  # noqa: PLC0415 - jinja2 only for this command
    from sidekick.store import EtcdError, EtcdUnavailable  # noqa: PLC0415

    try:
        options = rendering.make_options(
            dest=dest,
            template=template,
            variables=variables or [],
            check_cmd=check_cmd,
            reload_cmd=reload_cmd,
            reload_signal=reload_signal,
            reload_container=reload_container,
            mode=mode,
            watch_timeout=watch_timeout,
            once=once,
            wait=rendering.DEFAULT_WAIT if wait is None else wait,
            wait_name=_option_name(ctx, "wait", "--wait", "SIDEKICK_RENDER_WAIT"),
        )
        renderer = rendering.Renderer(
            options,
            config.prefix,
            rendering.EtcdWatcher(make_store(config)),
            docker_url=config.docker_url,
        )
    except ConfigError as exc:
        fail(str(exc))
    if not once:
        server = _health_server(metrics_address, renderer.health, renderer.metrics.registry)
        try:
            renderer.run()
        finally:
            if server is not None:
                server.stop()
        return
    try:
        live = renderer.once()
    except EtcdUnavailable as exc:
        fail(str(exc), EXIT_ETCD)
    except (EtcdError, rendering.RenderError) as exc:
        fail(str(exc), EXIT_NOTHING)
    if not live:
        fail(f"{dest} was not replaced: the new file was refused (see the log)", EXIT_NOTHING)
