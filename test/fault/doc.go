// Package fault is Warbler's fault suite: the faults of the project's
// security test list that happen to the machine rather than come from a
// client, run against the real server binary on loopback ports with its
// real Badger store, driven by real MQTT clients (paho).
//
//	case  fault                                   test
//	21    disk full under a QoS 1 chat stream     TestCase21DiskFull
//	22    bit flips and truncation in the store   TestCase22CorruptStore
//	—     30 minutes of steady chat load: RSS,    TestSoak (make soak)
//	      heap and goroutines stay flat
//
// Every test builds cmd/warbler once, starts it as a child process in its
// own process group, waits on its "warbler listening" log line, and kills
// only that group when it ends. Waits are on events (an answer, an exit, a
// log line) with deadlines; nothing leaves the machine.
//
// The disk-full test needs a filesystem that can fill up without filling
// the machine's: it mounts a small tmpfs, which takes root (or
// CAP_SYS_ADMIN). Where that is not allowed it skips and says so.
//
// The soak test runs only when WARBLER_SOAK is set to a duration
// ("30m", "2m"); `make soak` sets it. The short tests run with
// `go test ./...`.
package fault
