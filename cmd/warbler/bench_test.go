package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// TestBenchSmoke runs every bench scenario briefly against a fresh Warbler
// and a fresh Mosquitto, and checks that each one delivered everything it
// sent and that the ratios were computed. The numbers themselves are for
// BENCHMARKS.md, not for a test.
func TestBenchSmoke(t *testing.T) {
	mqtttest.RequireTool(t, "mosquitto")
	out, err := exec.Command(warblerBin, "bench", "--target", "both", "--pairs", "2", "--messages", "50",
		"--members", "5", "--group-messages", "3", "--offline", "200", "--page", "50", "--timeout", "60s").CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	text := string(out)
	t.Log(text)
	for _, target := range []string{"mosquitto", "warbler"} {
		for _, want := range []string{"pairs      " + target + " sent=100     delivered=100 ",
			"group5     " + target + " sent=3       delivered=15 ",
			"offline    " + target + " sent=200     delivered=200 "} {
			if !strings.Contains(text, want) {
				t.Errorf("missing %q", want)
			}
		}
	}
	if strings.Count(text, "ratio ") != 3 {
		t.Errorf("want 3 ratio lines")
	}
}
