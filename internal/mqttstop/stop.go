// Package mqttstop stops an embedded mochi-mqtt server the way its Close
// does, without the deadlock in Close.
//
// mochi-mqtt's Server.Close (v2.7.9) closes each listener's clients through
// Clients.GetByListener, which read-locks the client map and then, through
// Clients.Len, read-locks it again. A sync.RWMutex does not allow that: when
// a client that is disconnecting at that moment asks for the write lock (to
// remove itself) between the two read locks, the writer waits for the first
// reader and the second read lock waits for the writer, forever. Close then
// never returns. It happens whenever clients go away while the server
// stops, which is exactly when they do.
//
// Close here closes each listener with a function that takes a snapshot of
// the clients under one read lock (Clients.GetAll) and disconnects that
// listener's clients from it; a listener closes its clients only once, so
// the server's own Close that follows finds nothing more to do there and
// stops the hooks.
package mqttstop

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Close stops srv: every listener stops accepting, every client it
// accepted is disconnected with "server shutting down" and waited for, then
// the server's hooks stop. It returns srv.Close's error.
func Close(srv *mqtt.Server) error {
	srv.Listeners.CloseAll(func(listener string) {
		for _, cl := range srv.Clients.GetAll() {
			if cl.Net.Listener == listener && !cl.Closed() {
				_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
	})
	return srv.Close()
}
