package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/warblerim/warbler/broker"
)

func init() {
	register(&command{name: "serve", summary: "run the server (no config needed: data in ./data, MQTT :1883, WebSocket :8083, HTTP :8080)", run: runServe})
	register(&command{name: "version", summary: "print the version", run: func(env *cliEnv, _ []string) error {
		fmt.Fprintln(env.stdout, "warbler", broker.Version())
		return nil
	}})
}

func runServe(env *cliEnv, args []string) error {
	c := commands["serve"]
	fs := newFlagSet(env, c)
	configFile := fs.String("config", "", "YAML configuration `file` (or WARBLER_CONFIG)")
	data := fs.String("data", "", "data `dir` (or WARBLER_DATA; default ./data)")
	mqttAddr := fs.String("mqtt", "", "MQTT/TCP listen `addr` (or WARBLER_MQTT; default :1883)")
	wsAddr := fs.String("ws", "", "MQTT-over-WebSocket listen `addr` (or WARBLER_WS; default :8083)")
	httpAddr := fs.String("http", "", "HTTP listen `addr` (or WARBLER_HTTP; default :8080)")
	logLevel := fs.String("log-level", "", "log `level`: debug, info, warn, error")
	logFormat := fs.String("log-format", "", "log `format`: text or json (default: text on a terminal, else json)")
	pos, err := parseAnywhere(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
	}

	// Precedence: defaults, then the YAML file, then WARBLER_* variables,
	// then flags.
	cfg := broker.Default()
	if *configFile == "" {
		*configFile = env.getenv("WARBLER_CONFIG")
	}
	if *configFile != "" {
		if err := cfg.LoadFile(*configFile); err != nil {
			return err
		}
	}
	if err := cfg.ApplyEnv(env.getenv); err != nil {
		return err
	}
	// Flags win; an explicitly empty address ("--ws ''") disables a listener.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["data"] {
		cfg.Data = *data
	}
	if set["mqtt"] {
		cfg.MQTT.Addr = *mqttAddr
	}
	if set["ws"] {
		cfg.MQTT.WSAddr = *wsAddr
	}
	if set["http"] {
		cfg.HTTP.Addr = *httpAddr
	}
	if set["log-level"] {
		cfg.Log.Level = *logLevel
	}
	if set["log-format"] {
		cfg.Log.Format = *logFormat
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	logger := newLogger(env.stderr, cfg.Log)
	slog.SetDefault(logger)
	logger.Info("starting warbler", "version", broker.Version())
	return broker.Run(context.Background(), cfg, broker.Options{Logger: logger})
}

// newLogger builds the process logger: text on a terminal, JSON otherwise
// (or as configured).
func newLogger(w io.Writer, lc broker.LogConfig) *slog.Logger {
	var level slog.Level
	switch strings.ToLower(lc.Level) {
	case "debug":
		level = slog.LevelDebug
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	format := lc.Format
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
