// Package adversarial is Warbler's adversarial test suite: every attack and
// fault of the project's security test list that applies to the broker and
// identity, run end to end against a real server. Each test starts a server
// with broker.New on loopback ports (a real Badger store in a temporary
// directory), attacks it with raw sockets or real MQTT clients (paho), and
// asserts two things: the exact answer to the attack (a reason code, a
// closed socket, an HTTP status, a counter), and that a control pair of
// well-behaved clients still exchanges messages afterwards.
//
// Attackers connect from 127.0.0.2 and up; the control clients from
// 127.0.0.1, which the tests' configuration exempts from per-address limits
// (on Linux every 127/8 address reaches loopback). Nothing leaves the
// machine and every wait has a deadline.
//
//	case  attack or fault                                      test
//	1, 3  non-CONNECT first packet, 268 MB length claim,        TestCase01And03BadFraming
//	      five-byte remaining length; heap stays flat
//	2     idle and slowloris sockets before CONNECT; they        TestCase02PreConnectSockets
//	      count toward the per-address and global caps
//	4     truncated v5 SUBSCRIBE, QoS 1 without packet ID,       TestCase04MalformedPackets
//	      lengths beyond the packet (DISCONNECT 0x81 or 0x82)
//	5     PUBLISH to wildcard, empty, $SYS, NUL, bad UTF-8        TestCase05BadPublishTopics
//	6     $share/g, $share//t, wildcard share names              TestCase06BadSharedSubscriptions
//	7     more than 32 levels, 64 KiB of slashes                 TestCase07DeepAndLongTopics
//	8     10k user properties, duplicate (0x82) and misplaced    TestCase08Properties
//	      ones
//	9     MQTT 3.1.1 empty client ID without clean session       TestCase09EmptyClientID
//	10    '/', '+', '#', '$', NUL, overlong IDs and usernames    TestCase10HostileIdentifiers
//	11    another user's or app's client ID                      TestCase11ForeignClientID
//	12    $SYS, other apps' topics, root wildcards, retained      TestCase12TenantIsolation
//	13    user revoked while its durable session is subscribed   TestCase13RevokedDurableSession
//	      (subscription removed; restored, it subscribes again)
//	14    QoS 2 packet ID reuse, Receive Maximum exceeded        TestCase14InflightAbuse
//	15    oversize payloads (packet cap, app cap, MQTT 3 and 5)  TestCase15OversizePayload
//	16    connect storm, flapping, bans before auth, restarts    TestCase16ConnectStorm, TestCase16Flapping, TestCase16Bans
//	17    foreign WebSocket Origin, oversized frame, banned IP   TestCase17WebSocket
//	18    password guessing, TOTP replay                         TestCase18Guessing
//	19    kill -9 during a QoS 1 stream (lost/unexpected/dup)    TestCase19KillDuringQoS1Stream
//	      kill -9 with webhook events queued and in flight       TestCase19WebhooksSurviveKill
//	23    a subscriber that never reads (chat; plain MQTT at     TestCase23SubscriberNeverReads,
//	      QoS 1: held up for mqtt.write_timeout at most, once)   TestCase23PlainSubscriberNeverReads
//	25    restart with many persistent sessions; unacknowledged  TestCase25RestartWithManySessions,
//	      QoS 1 deliveries resent with DUP                       TestCase25InflightResentWithDUP
//	26    wall-clock jumps (bans, flapping windows; TOTP codes   TestCase26ClockJump, TestCase26TOTPClockJump
//	      follow the server's clock, no replay across a jump)
//
// Limits without a case number of their own have tests named after them:
// TestPublishRateLimits, TestPublishSlowedToRate, TestAppQuotas,
// TestSubscriptionCap, TestHTTPRateLimits.
//
// Case 19 kills the server 3 times; set WARBLER_ADVERSARIAL_KILLS for more.
// Case 25 restores 500 sessions; set WARBLER_ADVERSARIAL_SESSIONS=100000
// for the long run. Case 19 builds cmd/warbler and is skipped with -short.
// Cases 20 (power loss), 21 (disk full), 22 (corrupted store) and 24 (push
// provider failures) belong to the fault suite and the push bridge.
package adversarial
