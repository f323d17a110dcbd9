// pause is the pod sandbox process, a small stand-in for Kubernetes' pause image.
//
// It holds the pod's namespaces open and does nothing else: it blocks waiting for signals, exits 0
// on SIGINT or SIGTERM, and, because with shareProcessNamespace it is PID 1 of the pod's PID
// namespace, it reaps orphaned children that get re-parented to it on SIGCHLD (otherwise they
// would stay zombies and fill the process table).
//
// Built static (CGO_ENABLED=0) so the image needs nothing but this file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause (kdev) 3.10\n")
		return
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		switch sig {
		case syscall.SIGCHLD:
			reap()
		default:
			os.Exit(0)
		}
	}
}

// reap collects every child that has exited. Signals coalesce, so one SIGCHLD may stand for
// several children: loop until none is left.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
