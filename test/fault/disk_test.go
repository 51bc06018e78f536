package fault

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/warblerim/warbler/internal/mqtttest"
)

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory and unmounts
// it when the test ends; it skips the test where mounting is not allowed.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill up (needs root or CAP_SYS_ADMIN): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file in dir until the filesystem is full and returns its
// path; removing it gives the space back.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("fill: %v", err)
				}
				break
			}
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if free := st.Bavail * uint64(st.Bsize); free != 0 {
		t.Fatalf("filesystem still has %d bytes free", free)
	}
	return path
}

// Case 21: the disk fills up under a QoS 1 chat stream. A send the server
// could not store must not be acknowledged: MQTT 5 gets a PUBACK with a
// reason code of 0x80 or above, MQTT 3.1.1 (which has no negative PUBACK)
// gets no PUBACK at all. The server must stay up, and take sends again
// once space comes back. At the end, every send that was acknowledged is
// in the recipient's history exactly once (lost = acked − stored = ∅).
//
// What is at stake: Badger v4.9.6 writes its memtable logs through a
// mapping of a sparse file, and on a full filesystem the page fault of such
// a write is answered with SIGBUS, which kills the process (fatal error:
// fault, in badger.(*logFile).writeEntry). The store's space guard refuses
// writes below a free-space reserve and preallocates the active log, so
// the filler below takes the last free byte without the server dying.
func TestCase21DiskFull(t *testing.T) {
	mnt := mountTmpfs(t, 48<<20)
	s := start(t, filepath.Join(mnt, "data"))
	alice := s.connect(t, "alice", "phone")
	s.device(t, "bob", "phone")
	v3 := s.device(t, "alice", "v3") // registering a device is a write too

	var acked []string
	refused := 0
	seq := 0
	sendOne := func() (byte, error) {
		seq++
		cmid := fmt.Sprintf("m%04d", seq)
		code, err := sendCode(alice.Client, "alice", "phone", "bob", cmid, 10*time.Second)
		if err == nil && code == 0 {
			acked = append(acked, cmid)
		}
		return code, err
	}
	for range 20 {
		if code, err := sendOne(); err != nil || code != 0 {
			t.Fatalf("send before the disk filled: reason 0x%x, %v", code, err)
		}
	}

	filler := fill(t, mnt)
	t.Logf("filesystem full after %d acked sends", len(acked))

	// Keep sending until the store notices (it has some room left in files
	// it already allocated): at most 2000 sends.
	for range 2000 {
		code, err := sendOne()
		if err != nil {
			t.Fatalf("send on a full disk: no PUBACK (%v); server running: %v\n%s", err, s.running(), s.logText())
		}
		if code >= 0x80 {
			refused++
			if refused == 5 {
				break
			}
		}
		if !s.running() {
			t.Fatalf("server exited on a full disk: %v\n%s", s.err, s.logText())
		}
	}
	if refused == 0 {
		t.Fatalf("2000 sends on a full disk were all acknowledged")
	}
	t.Logf("full disk: %d acked in all, %d refused", len(acked), refused)

	// MQTT 3.1.1: no PUBACK for a send that could not be stored.
	v3NoAck(t, s, v3)

	if !s.running() {
		t.Fatalf("server exited: %v\n%s", s.err, s.logText())
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Space is back: sends are acknowledged again within a bounded time.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, err := sendOne()
		if err == nil && code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sends still refused 30s after space came back: reason 0x%x, %v\n%s", code, err, s.logText())
		}
		time.Sleep(100 * time.Millisecond) // retry pacing, not a wait for an event
	}
	for range 20 {
		if code, err := sendOne(); err != nil || code != 0 {
			t.Fatalf("send after space came back: reason 0x%x, %v", code, err)
		}
	}

	// Restart, to read history from the disk rather than from caches.
	s.stop(t)
	s = start(t, filepath.Join(mnt, "data"))
	seen := s.history(t, "bob")
	var lost, dup []string
	for _, c := range acked {
		if seen[c] == 0 {
			lost = append(lost, c)
		}
	}
	for c, n := range seen {
		if n > 1 {
			dup = append(dup, c)
		}
	}
	t.Logf("sent %d, acked %d, refused %d, in history %d", seq, len(acked), refused, len(seen))
	if len(lost) > 0 || len(dup) > 0 {
		t.Fatalf("lost %v, duplicated %v", lost, dup)
	}
}

// sendCode is send, except that a PUBACK with a reason code of 0x80 or
// above is an answer (its code, no error), which paho reports as an error
// alongside the response: only a missing PUBACK is an error here.
func sendCode(cl *paho.Client, from, device, to, cmid string, within time.Duration) (byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	resp, err := cl.Publish(ctx, &paho.Publish{Topic: "w/demo/up/" + from + "/" + device, QoS: 1, Payload: envelope(to, cmid)})
	if resp != nil {
		return resp.ReasonCode, nil
	}
	return 0, err
}

// v3NoAck sends a chat message over MQTT 3.1.1 from device c (registered
// while there was space) on a full disk and checks
// that no PUBACK comes: MQTT 3.1.1 cannot say "not stored" in a PUBACK, so
// the server must stay silent (the client resends later) or disconnect.
func v3NoAck(t *testing.T, s *server, c creds) {
	t.Helper()
	conn := mqtttest.DialTCP(t, s.addrs["mqtt"])
	defer conn.Close()
	r := bufio.NewReader(conn)
	write := func(b []byte) {
		if _, err := conn.Write(b); err != nil {
			t.Fatalf("v3 write: %v", err)
		}
	}
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0xC2, 0, 60}, mstr(c.ClientID)...)
	body = append(body, mstr(c.Username)...)
	body = append(body, mstr(c.Password)...)
	write(packet(0x10, body))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, rest, err := readPacket(r)
	if err != nil || typ != 0x20 || len(rest) < 2 || rest[1] != 0 {
		t.Fatalf("v3 CONNACK: type 0x%x %v %v", typ, rest, err)
	}
	pub := append(mstr("w/demo/up/alice/v3"), 0, 7)
	pub = append(pub, envelope("bob", "v3-full")...)
	write(packet(0x32, pub))
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		typ, rest, err := readPacket(r)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			t.Logf("v3: no PUBACK within 3s for a send on a full disk")
			return
		case errors.Is(err, io.EOF) || err != nil:
			t.Logf("v3: connection closed without a PUBACK (%v)", err)
			return
		case typ == 0x40:
			t.Fatalf("v3: PUBACK %v for a send on a full disk", rest)
		}
	}
}

func mstr(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

func packet(first byte, body []byte) []byte {
	out := []byte{first}
	n := len(body)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// readPacket reads one MQTT packet: its type nibble and body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("bad remaining length")
		}
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return first & 0xF0, body, err
}
