package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/warblerim/warbler/internal/bench"
)

func init() {
	register(&command{name: "bench", args: "[flags]",
		summary: "measure throughput and latency against a fresh local Warbler and Mosquitto, side by side",
		run:     runBench})
}

func runBench(env *cliEnv, args []string) error {
	c := commands["bench"]
	fs := newFlagSet(env, c)
	targets := fs.String("target", "both", "`who` to measure: warbler, mosquitto or both")
	scenarios := fs.String("scenario", "pairs,group,offline", "comma-separated `list` of pairs, group, offline, flood (pairs with and without one client flooding)")
	pairs := fs.Int("pairs", 8, "1:1 pairs (pairs scenario)")
	messages := fs.Int("messages", 2500, "messages per pair")
	window := fs.Int("window", 16, "QoS 1 messages in flight per publisher")
	rate := fs.Int("rate", 0, "total send `rate` in msg/s for the pairs scenario (0: as fast as possible)")
	size := fs.Int("size", 200, "payload size in bytes")
	members := fs.Int("members", 1000, "group members (group scenario)")
	groupMsgs := fs.Int("group-messages", 20, "messages sent to the group")
	offline := fs.Int("offline", 10000, "messages queued for an offline device (offline scenario)")
	page := fs.Int("page", 500, "sync page size (Warbler offline scenario)")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on each scenario")
	bin := fs.String("warbler-bin", "", "warbler binary to measure (default: this one)")
	asJSON := fs.Bool("json", false, "print results as JSON lines")
	conf := fs.String("warbler-config", "", "configuration `file` for the measured Warbler (default: defaults with the per-user send quota off)")
	if _, err := parseAnywhere(fs, args); err != nil {
		return err
	}
	if *bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		*bin = exe
	}
	ctx := context.Background()
	names := strings.Split(*targets, ",")
	if *targets == "both" {
		names = []string{"mosquitto", "warbler"}
	}
	po := bench.PairsOptions{Pairs: *pairs, Messages: *messages, Window: *window, Rate: *rate, Size: *size, Timeout: *timeout}
	gop := bench.GroupOptions{Members: *members, Messages: *groupMsgs, Size: *size, Timeout: *timeout}
	oo := bench.OfflineOptions{Messages: *offline, Page: *page, Size: *size, Timeout: *timeout}
	var results []bench.Result
	for _, name := range names {
		rs, err := benchTarget(ctx, env, name, *bin, *conf, func(t bench.Target) ([]bench.Result, error) {
			return runScenarios(ctx, env, t, *scenarios, po, gop, oo, *asJSON)
		})
		if err != nil {
			return err
		}
		results = append(results, rs...)
	}
	if !*asJSON {
		printRatios(env, results)
	}
	return nil
}

// benchTarget starts one target in a fresh temporary directory, runs fn and
// stops it.
func benchTarget(ctx context.Context, env *cliEnv, name, bin, conf string, fn func(bench.Target) ([]bench.Result, error)) ([]bench.Result, error) {
	dir, err := os.MkdirTemp("", "warbler-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var t bench.Target
	switch name {
	case "mosquitto":
		t, err = bench.StartMosquitto(ctx, dir)
	case "warbler":
		var w *bench.Warbler
		w, err = bench.StartWarbler(ctx, bin, dir, conf)
		if err == nil {
			fmt.Fprintf(env.stderr, "warbler under test: pid %d, http %s\n", w.PID(), w.HTTPAddr())
			t = w
		}
	default:
		return nil, usageError{fmt.Sprintf("unknown target %q", name)}
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer t.Close()
	return fn(t)
}

func runScenarios(ctx context.Context, env *cliEnv, t bench.Target, scenarios string, po bench.PairsOptions, gop bench.GroupOptions, oo bench.OfflineOptions, asJSON bool) ([]bench.Result, error) {
	var out []bench.Result
	emit := func(r bench.Result) {
		if asJSON {
			b, _ := json.Marshal(r)
			fmt.Fprintln(env.stdout, string(b))
		} else {
			fmt.Fprintln(env.stdout, r)
		}
		out = append(out, r)
	}
	for _, sc := range strings.Split(scenarios, ",") {
		var r bench.Result
		var err error
		switch strings.TrimSpace(sc) {
		case "pairs":
			r, err = bench.Pairs(ctx, t, po)
		case "group":
			r, err = bench.Group(ctx, t, gop)
		case "flood":
			var rs []bench.Result
			if rs, err = bench.Flood(ctx, t, bench.FloodOptions{Pairs: po}); err == nil {
				emit(rs[0])
				r = rs[1]
			}
		case "offline":
			ot, ok := t.(interface{ Offline() bench.OfflineTarget })
			if !ok {
				continue
			}
			r, err = bench.Offline(ctx, t, ot.Offline(), oo)
		default:
			return nil, usageError{fmt.Sprintf("unknown scenario %q", sc)}
		}
		if err != nil {
			return nil, fmt.Errorf("%s on %s: %w", sc, t.Name(), err)
		}
		emit(r)
	}
	return out, nil
}

// printRatios compares Warbler with Mosquitto scenario by scenario.
func printRatios(env *cliEnv, rs []bench.Result) {
	by := map[string]map[string]bench.Result{}
	for _, r := range rs {
		if by[r.Scenario] == nil {
			by[r.Scenario] = map[string]bench.Result{}
		}
		by[r.Scenario][r.Target] = r
	}
	for sc, m := range by {
		w, okw := m["warbler"]
		q, okq := m["mosquitto"]
		if !okw || !okq || q.Throughput == 0 {
			continue
		}
		fmt.Fprintf(env.stdout, "ratio %-10s warbler/mosquitto: throughput %.2fx, p99 %.2fx, server cpu %.2fx, time %.2fx\n",
			sc, w.Throughput/q.Throughput, safeDiv(w.P99, q.P99), safeDiv(w.ServerCPU, q.ServerCPU), safeDiv(w.Duration, q.Duration))
	}
}

func safeDiv(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
