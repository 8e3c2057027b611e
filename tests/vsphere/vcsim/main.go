// Command vcsimlauncher runs govmomi's vSphere simulator for vcbfs's tests.
//
// Debian ships govmomi's simulator library but not its vcsim command, so the tests build this
// small launcher instead. It prints one line, "URL https://127.0.0.1:PORT/sdk", once the server
// answers, then serves until SIGTERM or SIGINT (or, with -stdin-watch, until stdin closes), when
// it removes the datastore directories.
//
// Besides the stock simulator it has these test hooks (see hooks.go):
//   - a VM whose extraConfig holds vcbfs.test.quiesceFault = "true" fails quiesced
//     CreateSnapshot_Task calls with vim.fault.ApplicationQuiesceFault;
//   - a VM whose extraConfig holds vcbfs.test.consolidationNeeded = "true" reports
//     runtime.consolidationNeeded once it is next updated (e.g. by a snapshot);
//   - vcbfs.test.snapshotSeconds = N makes CreateSnapshot_Task run N seconds;
//   - vcbfs.test.removeSnapshotFaults = N makes the VM's first N RemoveSnapshot_Task calls
//     fail (FileLocked); vcbfs.test.removeSnapshotSeconds = N delays each one N seconds;
//   - -strict-sessions: /folder and property reads need a live session, as in vSphere;
//   - snapshot removal no longer deletes files through stale layoutEx keys.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free port)")
	esx := flag.Bool("esx", false, "simulate a standalone ESX host (HostAgent) instead of vCenter")
	username := flag.String("username", "", "the only user name accepted by Login (default: any)")
	password := flag.String("password", "", "the only password accepted by Login (with -username)")
	tlsCert := flag.String("tlscert", "", "PEM certificate for the server (default: a built-in 1024-bit one)")
	tlsKey := flag.String("tlskey", "", "PEM private key for -tlscert")
	methodDelay := flag.String("method-delay", "", "per-method delays, e.g. CreateSnapshot_Task:300,Login:50 (ms)")
	vms := flag.Int("vms", -1, "VMs per resource pool in the model (VPX has 2 pools, ESX 1; default 2)")
	trace := flag.Bool("trace", false, "log SOAP requests and responses to stderr")
	strictSessions := flag.Bool("strict-sessions", false, "check sessions as vSphere does: /folder needs a live session cookie (401), property reads need a session")
	stdinWatch := flag.Bool("stdin-watch", false, "also stop when stdin closes (e.g. the parent died)")
	flag.Parse()

	if (*username == "") != (*password == "") {
		log.Fatal("-username and -password go together")
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		log.Fatal("-tlscert and -tlskey go together")
	}

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
	}
	if *vms >= 0 {
		model.Machine = *vms
	}
	delays, err := parseDelays(*methodDelay)
	if err != nil {
		log.Fatal(err)
	}
	model.DelayConfig.MethodDelay = delays

	tlsConfig := new(tls.Config) // no certificate: the simulator's built-in 1024-bit one
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			log.Fatalf("loading the TLS key pair: %s", err)
		}
		tlsConfig.Certificates = []tls.Certificate{cert}
	}

	// Everything that can fail on bad flags is done: from here on, the datastore
	// directories exist and must be removed on the way out.
	if err := model.Create(); err != nil {
		model.Remove()
		log.Fatalf("creating the model: %s", err)
	}
	defer model.Remove()

	listenURL := &url.URL{Host: *listen}
	if *username != "" {
		listenURL.User = url.UserPassword(*username, *password)
	}
	model.Service.Listen = listenURL
	model.Service.TLS = tlsConfig
	if *trace {
		simulator.Trace = true
		simulator.TraceFile = os.Stderr
	}

	// Catch signals before anyone knows the URL: a quick SIGTERM must still clean up.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	server := model.Service.NewServer()
	StrictSessions = *strictSessions
	installHooks(server)

	shown := *server.URL
	shown.User = nil // NewServer puts the credentials in the URL
	fmt.Printf("URL %s\n", shown.String())
	_ = os.Stdout.Sync()

	if *stdinWatch {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- syscall.SIGTERM
		}()
	}
	<-stop

	// Close waits for active connections; do not let a hung client keep the datastores around.
	closed := make(chan struct{})
	go func() {
		server.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
	}
}

// parseDelays reads "Name:ms,Name:ms" into the simulator's per-method delay map.
func parseDelays(spec string) (map[string]int, error) {
	delays := map[string]int{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, ms, ok := strings.Cut(item, ":")
		n, err := strconv.Atoi(ms)
		if !ok || name == "" || err != nil || n < 0 {
			return nil, fmt.Errorf("bad -method-delay item %q (want Name:milliseconds)", item)
		}
		delays[name] = n
	}
	return delays, nil
}
