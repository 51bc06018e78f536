package main

import (
	"os/exec"
	"regexp"
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
	got := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^(\S+)\s+(\S+)\s+sent=(\d+)\s+delivered=(\d+)`).FindAllStringSubmatch(text, -1) {
		got[m[1]+" "+m[2]] = m[3] + "/" + m[4]
	}
	for _, target := range []string{"mosquitto", "warbler"} {
		for sc, want := range map[string]string{"pairs": "100/100", "group5": "3/15", "offline": "200/200"} {
			if got[sc+" "+target] != want {
				t.Errorf("%s on %s: sent/delivered %q, want %s", sc, target, got[sc+" "+target], want)
			}
		}
	}
	if strings.Count(text, "ratio ") != 3 {
		t.Errorf("want 3 ratio lines")
	}
}
