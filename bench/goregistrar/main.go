// Command goregistrar is a minimal Docker-to-etcd registrar in Go, standard library only,
// written for sidekick's benchmark as the Go baseline beside sidekick in the realistic
// workloads (bench/realistic.py, issue #12). It is not registrator, nor derived from it: it
// does what sidekick does on the bench's containers, as simply as a Go program would, so that
// both can be timed on the same workload in the same run. It is built by the bench into its
// work dir and is not part of sidekick.
//
// What it does:
//
//   - grants an etcd v3 lease of -ttl seconds through the JSON gateway at -etcd and keeps it
//     alive every ttl/3 (a lost lease is granted anew and every key put back on it);
//   - subscribes to the Docker events on -docker-socket (start, die, kill, stop, destroy,
//     health_status of containers, narrowed by each -filter label=K[=V]), then lists the
//     running containers and registers those opted in, then follows the events;
//   - a container is opted in by the label sidekick.enable=true (or 1, yes, on); its service is
//     the label sidekick.service, else the base name of its image repository (as sidekick);
//   - at start (and at health_status: healthy) it inspects the container; one with a
//     healthcheck (Config.Healthcheck.Test set and not ["NONE"]) is registered only while
//     healthy; for each published TCP port with a host port it puts
//     <prefix>/<service>-<host port> = <address>:<host port> on the lease, the address being
//     the binding's HostIp, or -host-ip when Docker says all addresses (0.0.0.0, ::, empty);
//   - it deletes the keys it put for a container at health_status: unhealthy, at a kill with
//     SIGTERM, SIGKILL or the container's stop signal (Config.StopSignal, read at start), and
//     at die, stop and destroy;
//   - at SIGTERM or SIGINT it revokes the lease (etcd deletes every key on it) and exits.
//
// It logs JSON lines on stderr: "reconciled" once the listing's containers are registered,
// one "put" or "delete" per key (with "ms": since its event was read), and problems. Events
// of one container are handled in order, by a goroutine of its own while it has any;
// different containers' in parallel.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	labelEnable  = "sidekick.enable"
	labelService = "sidekick.service"
	idleConns    = 64 // kept connections to Docker and to etcd (a burst's requests at once)
)

var serviceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// -- logging -------------------------------------------------------------------------------

var logMu sync.Mutex

// logLine writes one JSON line on stderr: the event's name, then key/value pairs.
func logLine(event string, pairs ...interface{}) {
	line := map[string]interface{}{"event": event, "ts": time.Now().UTC().Format(time.RFC3339Nano)}
	for i := 0; i+1 < len(pairs); i += 2 {
		line[fmt.Sprint(pairs[i])] = pairs[i+1]
	}
	data, _ := json.Marshal(line)
	logMu.Lock()
	defer logMu.Unlock()
	os.Stderr.Write(append(data, '\n'))
}

// -- etcd v3 through its JSON gateway ------------------------------------------------------

type etcdClient struct {
	base string
	http *http.Client
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// call POSTs a JSON body and decodes the first JSON object of the answer into out.
func (e *etcdClient) call(path string, in, out interface{}) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := e.http.Post(e.base+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, bytes.TrimSpace(data))
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(bytes.NewReader(data)).Decode(out)
}

func (e *etcdClient) grant(ttl int) (int64, error) {
	var out struct {
		ID    json.Number `json:"ID"`
		Error string      `json:"error"`
	}
	if err := e.call("/v3/lease/grant", map[string]interface{}{"TTL": ttl}, &out); err != nil {
		return 0, err
	}
	if out.Error != "" {
		return 0, errors.New(out.Error)
	}
	return out.ID.Int64()
}

// keepAlive renews the lease once; its remaining TTL (0: the lease is gone).
func (e *etcdClient) keepAlive(lease int64) (int64, error) {
	var out struct {
		Result struct {
			TTL json.Number `json:"TTL"`
		} `json:"result"`
		Error json.RawMessage `json:"error"`
	}
	err := e.call("/v3/lease/keepalive", map[string]string{"ID": strconv.FormatInt(lease, 10)}, &out)
	if err != nil {
		return 0, err
	}
	if len(out.Error) > 0 {
		return 0, fmt.Errorf("keepalive: %s", out.Error)
	}
	if out.Result.TTL == "" {
		return 0, nil
	}
	return out.Result.TTL.Int64()
}

func (e *etcdClient) put(key, value string, lease int64) error {
	return e.call("/v3/kv/put", map[string]string{
		"key": b64(key), "value": b64(value), "lease": strconv.FormatInt(lease, 10),
	}, nil)
}

func (e *etcdClient) del(key string) error {
	return e.call("/v3/kv/deleterange", map[string]string{"key": b64(key)}, nil)
}

func (e *etcdClient) revoke(lease int64) error {
	return e.call("/v3/lease/revoke", map[string]string{"ID": strconv.FormatInt(lease, 10)}, nil)
}

func leaseGone(err error) bool {
	return err != nil && strings.Contains(err.Error(), "lease not found")
}

// -- Docker's API on its unix socket -------------------------------------------------------

type dockerClient struct {
	api    *http.Client // requests that answer at once
	stream *http.Client // the events stream: no timeout
}

var errNotFound = errors.New("no such container")

func newDocker(socket string) *dockerClient {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}
	return &dockerClient{
		api: &http.Client{
			Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: idleConns},
			Timeout:   30 * time.Second,
		},
		stream: &http.Client{Transport: &http.Transport{DialContext: dial}},
	}
}

func (d *dockerClient) get(path string, out interface{}) error {
	resp, err := d.api.Get("http://docker" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		io.Copy(io.Discard, resp.Body)
		return errNotFound
	}
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(data))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

type inspected struct {
	ID     string `json:"Id"`
	Name   string
	Config struct {
		Image       string
		Labels      map[string]string
		StopSignal  string
		Healthcheck *struct{ Test []string }
	}
	State struct {
		Running, Paused, Restarting bool
		Health                      *struct{ Status string }
	}
	NetworkSettings struct {
		Ports map[string][]struct{ HostIp, HostPort string }
	}
}

type message struct {
	Type   string
	Action string
	Actor  struct {
		ID         string
		Attributes map[string]string
	}
}

// -- the registrar -------------------------------------------------------------------------

type config struct {
	socket, etcd, prefix, hostIP string
	ttl                          int
	filters                      []string // label=K[=V]
}

type tracked struct {
	stopSignal int
	keys       []string // put for it, in order
}

type job struct {
	id     string
	action string // a Docker event's Action, or "sync" (from a listing)
	signal int    // a kill's
	done   *sync.WaitGroup
	since  time.Time // when it was read (the event) or made (a listing's)
}

type registrar struct {
	cfg     config
	docker  *dockerClient
	etcd    *etcdClient
	lanesMu sync.Mutex
	lanes   map[string][]job // per container: its jobs not yet done, the first in hand

	leaseMu sync.Mutex // held while a lost lease is granted anew
	mu      sync.Mutex // everything below
	lease   int64
	byID    map[string]*tracked
	values  map[string]string // every key put, and its value (to put back on a new lease)
}

func (r *registrar) currentLease() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// renew grants a new lease when `lost` is still the current one, and puts every key back.
func (r *registrar) renew(lost int64) {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if r.currentLease() != lost {
		return // renewed already
	}
	for {
		lease, err := r.etcd.grant(r.cfg.ttl)
		if err == nil {
			r.mu.Lock()
			r.lease = lease
			values := make(map[string]string, len(r.values))
			for k, v := range r.values {
				values[k] = v
			}
			r.mu.Unlock()
			for k, v := range values {
				if err := r.etcd.put(k, v, lease); err != nil {
					logLine("put failed", "key", k, "error", err.Error())
				}
			}
			logLine("lease granted anew", "lease", strconv.FormatInt(lease, 16), "keys", len(values))
			return
		}
		logLine("lease grant failed", "error", err.Error())
		time.Sleep(time.Second)
	}
}

func (r *registrar) keepAlive() {
	interval := time.Duration(r.cfg.ttl) * time.Second / 3
	for range time.Tick(interval) {
		lease := r.currentLease()
		ttl, err := r.etcd.keepAlive(lease)
		if err != nil && !leaseGone(err) {
			logLine("keepalive failed", "error", err.Error())
			continue
		}
		if ttl <= 0 {
			r.renew(lease)
		}
	}
}

func (r *registrar) put(key, value string) error {
	lease := r.currentLease()
	err := r.etcd.put(key, value, lease)
	if leaseGone(err) {
		r.renew(lease)
		err = r.etcd.put(key, value, r.currentLease())
	}
	return err
}

// dispatch queues a job behind the container's others; a container with none gets a
// goroutine that handles its jobs in order and ends when there are no more.
func (r *registrar) dispatch(j job) {
	r.lanesMu.Lock()
	defer r.lanesMu.Unlock()
	pending, busy := r.lanes[j.id]
	r.lanes[j.id] = append(pending, j)
	if !busy {
		go r.drain(j.id)
	}
}

func (r *registrar) drain(id string) {
	for {
		r.lanesMu.Lock()
		j := r.lanes[id][0]
		r.lanesMu.Unlock()
		r.handle(j)
		if j.done != nil {
			j.done.Done()
		}
		r.lanesMu.Lock()
		rest := r.lanes[id][1:]
		if len(rest) == 0 {
			delete(r.lanes, id)
			r.lanesMu.Unlock()
			return
		}
		r.lanes[id] = rest
		r.lanesMu.Unlock()
	}
}

func (r *registrar) handle(j job) {
	switch {
	case j.action == "sync", j.action == "start":
		r.sync(j.id, j.since)
	case strings.HasPrefix(j.action, "health_status:"):
		switch strings.TrimSpace(strings.TrimPrefix(j.action, "health_status:")) {
		case "healthy":
			r.sync(j.id, j.since)
		case "unhealthy":
			r.withdraw(j.id, false, j.since)
		}
	case j.action == "kill":
		r.mu.Lock()
		t := r.byID[j.id]
		stops := j.signal == int(syscall.SIGTERM) || j.signal == int(syscall.SIGKILL) ||
			(t != nil && j.signal == t.stopSignal)
		r.mu.Unlock()
		if stops {
			r.withdraw(j.id, false, j.since)
		}
	case j.action == "die", j.action == "stop":
		r.withdraw(j.id, false, j.since)
	case j.action == "destroy":
		r.withdraw(j.id, true, j.since)
	}
}

// sync inspects a container and puts the keys it should have now (or withdraws them).
func (r *registrar) sync(id string, since time.Time) {
	var c inspected
	if err := r.docker.get("/containers/"+id+"/json", &c); err != nil {
		if errors.Is(err, errNotFound) {
			r.withdraw(id, true, since)
			return
		}
		logLine("inspect failed", "container", short(id), "error", err.Error())
		return
	}
	if !enabled(c.Config.Labels) {
		return
	}
	r.mu.Lock()
	t := r.byID[id]
	if t == nil {
		t = &tracked{}
		r.byID[id] = t
	}
	t.stopSignal = signalNumber(c.Config.StopSignal)
	r.mu.Unlock()
	checked := c.Config.Healthcheck != nil && len(c.Config.Healthcheck.Test) > 0 &&
		c.Config.Healthcheck.Test[0] != "NONE"
	healthy := c.State.Health != nil && c.State.Health.Status == "healthy"
	if !c.State.Running || c.State.Paused || c.State.Restarting || (checked && !healthy) {
		r.withdraw(id, false, since)
		return
	}
	service := serviceName(c)
	if !serviceRE.MatchString(service) || len(service) > 128 {
		logLine("service name refused", "container", short(id), "service", service)
		return
	}
	keys, values := r.registrations(c, service)
	for i, key := range keys {
		if err := r.put(key, values[i]); err != nil {
			logLine("put failed", "key", key, "error", err.Error())
			continue
		}
		r.mu.Lock()
		r.values[key] = values[i]
		if !contains(t.keys, key) {
			t.keys = append(t.keys, key)
		}
		r.mu.Unlock()
		logLine("put", "key", key, "value", values[i], "ms", msSince(since))
	}
	// keys it had that it should no longer have (a port no longer published)
	r.mu.Lock()
	var stale, kept []string
	for _, key := range t.keys {
		if contains(keys, key) {
			kept = append(kept, key)
		} else {
			stale = append(stale, key)
			delete(r.values, key)
		}
	}
	t.keys = kept
	r.mu.Unlock()
	r.remove(stale, since)
}

// registrations: the keys and values of a container's published TCP ports, in a stable
// order; when an IPv4 and an IPv6 binding give one key, the IPv4 one's value.
func (r *registrar) registrations(c inspected, service string) ([]string, []string) {
	specs := make([]string, 0, len(c.NetworkSettings.Ports))
	for spec := range c.NetworkSettings.Ports {
		specs = append(specs, spec)
	}
	sort.Strings(specs)
	var keys, values []string
	index := map[string]int{}
	for _, spec := range specs {
		if !strings.HasSuffix(spec, "/tcp") {
			continue
		}
		for _, b := range c.NetworkSettings.Ports[spec] {
			port, err := strconv.Atoi(b.HostPort)
			if err != nil || port < 1 || port > 65535 {
				continue
			}
			ip := net.ParseIP(strings.Trim(b.HostIp, "[]"))
			address := r.cfg.hostIP
			if ip != nil && !ip.IsUnspecified() {
				address = ip.String()
			}
			v6 := strings.Contains(address, ":")
			shown := address
			if v6 {
				shown = "[" + address + "]"
			}
			key := fmt.Sprintf("%s/%s-%d", r.cfg.prefix, service, port)
			value := fmt.Sprintf("%s:%d", shown, port)
			if i, seen := index[key]; seen {
				if !v6 && strings.HasPrefix(values[i], "[") {
					values[i] = value
				}
				continue
			}
			index[key] = len(keys)
			keys = append(keys, key)
			values = append(values, value)
		}
	}
	return keys, values
}

// withdraw deletes the keys put for a container; forget drops what is known of it.
func (r *registrar) withdraw(id string, forget bool, since time.Time) {
	r.mu.Lock()
	var keys []string
	if t := r.byID[id]; t != nil {
		keys, t.keys = t.keys, nil
		for _, key := range keys {
			delete(r.values, key)
		}
	}
	if forget {
		delete(r.byID, id)
	}
	r.mu.Unlock()
	r.remove(keys, since)
}

// remove deletes keys; since: when the job that wants it was read (for the log's "ms").
func (r *registrar) remove(keys []string, since time.Time) {
	for _, key := range keys {
		if err := r.etcd.del(key); err != nil {
			logLine("delete failed", "key", key, "error", err.Error())
			continue
		}
		logLine("delete", "key", key, "ms", msSince(since))
	}
}

// -- following Docker -----------------------------------------------------------------------

func (r *registrar) labelFilters() []string {
	var labels []string
	for _, f := range r.cfg.filters {
		labels = append(labels, strings.TrimPrefix(f, "label="))
	}
	return labels
}

func (r *registrar) filterQuery(extra map[string][]string) string {
	filters := map[string][]string{}
	if labels := r.labelFilters(); len(labels) > 0 {
		filters["label"] = labels
	}
	for k, v := range extra {
		filters[k] = v
	}
	data, _ := json.Marshal(filters)
	return url.QueryEscape(string(data))
}

// resync lists the running containers and syncs each (in its worker's queue, so in order
// with its events); withdraws the ones known that are gone; logs "reconciled" when done.
func (r *registrar) resync() error {
	var listed []struct {
		ID string `json:"Id"`
	}
	if err := r.docker.get("/containers/json?filters="+r.filterQuery(nil), &listed); err != nil {
		return err
	}
	running := map[string]bool{}
	var done sync.WaitGroup
	for _, c := range listed {
		running[c.ID] = true
		done.Add(1)
		r.dispatch(job{id: c.ID, action: "sync", done: &done, since: time.Now()})
	}
	r.mu.Lock()
	var gone []string
	for id := range r.byID {
		if !running[id] {
			gone = append(gone, id)
		}
	}
	r.mu.Unlock()
	for _, id := range gone {
		done.Add(1)
		r.dispatch(job{id: id, action: "destroy", done: &done, since: time.Now()})
	}
	go func() {
		done.Wait()
		r.mu.Lock()
		keys := len(r.values)
		r.mu.Unlock()
		logLine("reconciled", "containers", len(listed), "keys", keys)
	}()
	return nil
}

// follow subscribes to the events, then lists, then reads the events; again after a break.
func (r *registrar) follow() {
	query := r.filterQuery(map[string][]string{
		"type":  {"container"},
		"event": {"start", "die", "kill", "stop", "destroy", "health_status"},
	})
	for {
		resp, err := r.docker.stream.Get("http://docker/events?filters=" + query)
		if err == nil && resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			err = fmt.Errorf("events: %s", resp.Status)
		}
		if err == nil {
			err = r.resync() // subscribed first: nothing between the listing and the events is lost
			decoder := json.NewDecoder(resp.Body)
			for err == nil {
				var m message
				if err = decoder.Decode(&m); err == nil && m.Type == "container" && m.Actor.ID != "" {
					sig, _ := strconv.Atoi(m.Actor.Attributes["signal"])
					r.dispatch(job{id: m.Actor.ID, action: m.Action, signal: sig, since: time.Now()})
				}
			}
			resp.Body.Close()
		}
		logLine("docker events broken; again in 1 s", "error", err.Error())
		time.Sleep(time.Second)
	}
}

// -- small things ---------------------------------------------------------------------------

func enabled(labels map[string]string) bool {
	switch strings.ToLower(strings.TrimSpace(labels[labelEnable])) {
	case "true", "1", "yes", "on":
		return true
	}
	return false
}

// serviceName: the sidekick.service label, else the base name of the image repository.
func serviceName(c inspected) string {
	if name, ok := c.Config.Labels[labelService]; ok {
		return name
	}
	image := strings.SplitN(c.Config.Image, "@", 2)[0]
	if i := strings.LastIndex(image, ":"); i > 0 && !strings.Contains(image[i+1:], "/") {
		image = image[:i]
	}
	return image[strings.LastIndex(image, "/")+1:]
}

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"ILL": syscall.SIGILL, "TRAP": syscall.SIGTRAP, "ABRT": syscall.SIGABRT,
	"BUS": syscall.SIGBUS, "FPE": syscall.SIGFPE, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "SEGV": syscall.SIGSEGV, "USR2": syscall.SIGUSR2,
	"PIPE": syscall.SIGPIPE, "ALRM": syscall.SIGALRM, "TERM": syscall.SIGTERM,
	"CHLD": syscall.SIGCHLD, "CONT": syscall.SIGCONT, "STOP": syscall.SIGSTOP,
	"TSTP": syscall.SIGTSTP, "TTIN": syscall.SIGTTIN, "TTOU": syscall.SIGTTOU,
	"URG": syscall.SIGURG, "XCPU": syscall.SIGXCPU, "XFSZ": syscall.SIGXFSZ,
	"VTALRM": syscall.SIGVTALRM, "PROF": syscall.SIGPROF, "WINCH": syscall.SIGWINCH,
	"IO": syscall.SIGIO, "PWR": syscall.SIGPWR, "SYS": syscall.SIGSYS,
}

// signalNumber: a signal as Docker writes it ("15", "SIGQUIT", "QUIT"); SIGTERM if unset or odd.
func signalNumber(text string) int {
	text = strings.ToUpper(strings.TrimSpace(text))
	if n, err := strconv.Atoi(text); err == nil {
		return n
	}
	if s, ok := signalNames[strings.TrimPrefix(text, "SIG")]; ok {
		return int(s)
	}
	return int(syscall.SIGTERM)
}

// msSince: milliseconds from t to now, to 0.01 ms.
func msSince(t time.Time) float64 {
	return float64(time.Since(t).Microseconds()/10) / 100
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

type filterFlags []string

func (f *filterFlags) String() string { return strings.Join(*f, ",") }

func (f *filterFlags) Set(v string) error {
	if !strings.HasPrefix(v, "label=") || len(v) == len("label=") {
		return fmt.Errorf("only label=K[=V] filters: %q", v)
	}
	*f = append(*f, v)
	return nil
}

func main() {
	var cfg config
	var filters filterFlags
	flag.StringVar(&cfg.socket, "docker-socket", "/var/run/docker.sock", "Docker's unix socket")
	flag.StringVar(&cfg.etcd, "etcd", "http://127.0.0.1:2379", "etcd's v3 JSON gateway")
	flag.StringVar(&cfg.prefix, "prefix", "/test", "key prefix")
	flag.IntVar(&cfg.ttl, "ttl", 30, "lease TTL in seconds (keepalive every ttl/3)")
	flag.StringVar(&cfg.hostIP, "host-ip", "127.0.0.1", "address for ports published on all addresses")
	flag.Var(&filters, "filter", "label=K[=V]: only containers with that label (repeatable)")
	flag.Parse()
	cfg.filters = filters
	cfg.prefix = strings.TrimRight(cfg.prefix, "/")
	cfg.etcd = strings.TrimRight(cfg.etcd, "/")
	if flag.NArg() > 0 || cfg.ttl < 3 || net.ParseIP(cfg.hostIP) == nil || cfg.prefix == "" {
		flag.Usage()
		os.Exit(2)
	}

	r := &registrar{
		cfg:    cfg,
		docker: newDocker(cfg.socket),
		etcd: &etcdClient{base: cfg.etcd, http: &http.Client{
			Transport: &http.Transport{MaxIdleConnsPerHost: idleConns},
			Timeout:   5 * time.Second,
		}},
		lanes:  map[string][]job{},
		byID:   map[string]*tracked{},
		values: map[string]string{},
	}
	lease, err := r.etcd.grant(cfg.ttl)
	if err != nil {
		logLine("lease grant failed", "error", err.Error())
		os.Exit(1)
	}
	r.lease = lease
	logLine("lease granted", "lease", strconv.FormatInt(lease, 16), "ttl", cfg.ttl)
	go r.keepAlive()
	go r.follow()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	if err := r.etcd.revoke(r.currentLease()); err != nil {
		logLine("revoke failed; keys expire within the ttl", "error", err.Error())
		os.Exit(1)
	}
	logLine("lease revoked; keys removed")
}
