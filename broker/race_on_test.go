//go:build race

package broker

// raceEnabled tells load-sized tests that the race detector slows them
// down by an order of magnitude.
const raceEnabled = true
