package broker

import (
	"testing"
)

// FuzzLoadConfig feeds arbitrary YAML to the configuration loader, the
// parser of the operator's file, and then validates the result. Neither
// may panic, and a configuration that validates must still have what
// Validate promises (a data dir, a usable packet size and limits).
func FuzzLoadConfig(f *testing.F) {
	for _, s := range []string{
		"", "data: /tmp/x\n", "mqtt:\n  addr: ':1883'\n  max_packet_size: 1024\n",
		"mqtt:\n  adr: ':1883'\n", "chat:\n  send_rate: -1\n  max_group_size: 100000\n",
		"mqtt:\n  connect_timeout: 5s\n", "mqtt:\n  connect_timeout: -1h\n",
		"limits:\n  max_connections: 10\n", "log:\n  level: debug\n  format: json\n",
		"tls:\n  cert_file: a\n", "[1, 2", "mqtt: &a\n  addr: *a\n", "{}", "- a\n- b\n",
		"mqtt:\n  anonymous:\n    app: x\n    rules:\n      - pattern: 'w/{app}/#'\n        access: read\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Default()
		c.Data = "/data"
		if err := c.LoadBytes(b); err != nil {
			return
		}
		if c.Validate() != nil {
			return
		}
		if c.Data == "" || c.MQTT.MaxPacketSize < 64 || c.MQTT.ConnectTimeout.D() <= 0 {
			t.Fatalf("validated a config without a data dir, packet size or timeout: %+v", c)
		}
	})
}
