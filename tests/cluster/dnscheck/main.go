// dnscheck looks names up with Go's own resolver (what a CGO_ENABLED=0 app in a pod uses: the
// pod's /etc/resolv.conf, its search domains and ndots), for tests/cluster/selftest, which runs
// it in a pod with `go run`.
//
//	dnscheck NAME=IP...   NAME must resolve, and IP be among its addresses
//	dnscheck NAME!...     NAME must fail to resolve, within 2 s (not a resolver timeout)
//
// One line per check, "ok: ..." or "FAILED: ..."; exits 1 when a check failed.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

const failFast = 2 * time.Second

func main() {
	failed := false
	for _, arg := range os.Args[1:] {
		name, want, resolve := strings.Cut(arg, "=")
		name = strings.TrimSuffix(name, "!")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		start := time.Now()
		addrs, err := net.DefaultResolver.LookupHost(ctx, name)
		took := time.Since(start).Round(time.Millisecond)
		cancel()
		var problem string
		switch {
		case resolve && err != nil:
			problem = fmt.Sprintf("want %s, got %v", want, err)
		case resolve && !slices.Contains(addrs, want):
			problem = fmt.Sprintf("want %s, got %v", want, addrs)
		case !resolve && err == nil:
			problem = fmt.Sprintf("want no address, got %v", addrs)
		case !resolve && took > failFast:
			problem = fmt.Sprintf("failed only after %s (%v)", took, err)
		}
		result := fmt.Sprint(addrs)
		if err != nil {
			result = err.Error()
		}
		if problem != "" {
			failed = true
			fmt.Printf("FAILED: %s: %s (in %s)\n", name, problem, took)
		} else {
			fmt.Printf("ok: %s: %s (in %s)\n", name, result, took)
		}
	}
	if failed {
		os.Exit(1)
	}
}
