// Command warbler is the Warbler server and its command-line tools.
//
//	warbler serve      run the server (embedded defaults; data in ./data)
//	warbler version    print the version
//
// Run "warbler help" for every command, and "warbler CMD -h" for its flags.
// Flags may come before or after positional arguments.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one subcommand of the warbler binary.
type command struct {
	name    string
	args    string // synopsis of the positional arguments
	summary string
	run     func(env *cliEnv, args []string) error
}

// cliEnv is what a command may touch: its streams and environment, so that
// tests can run commands in-process.
type cliEnv struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// usageError makes main print the command's usage after the message.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	env := &cliEnv{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(runMain(env, os.Args[1:]))
}

func runMain(env *cliEnv, args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printHelp(env.stdout)
		return 0
	}
	name := args[0]
	// Two-word commands: "app create", "user create".
	if len(args) > 1 {
		if c, ok := commands[name+" "+args[1]]; ok {
			return runCommand(env, c, args[2:])
		}
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(env.stderr, "warbler: unknown command %q\n\n", strings.Join(args[:min(2, len(args))], " "))
		printHelp(env.stderr)
		return 2
	}
	return runCommand(env, c, args[1:])
}

func runCommand(env *cliEnv, c *command, args []string) int {
	err := c.run(env, args)
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(env.stderr, "warbler %s: %v\n", c.name, err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.stderr, "usage: warbler %s %s\n", c.name, c.args)
		return 2
	}
	return 1
}

func printHelp(w io.Writer) {
	fmt.Fprintln(w, "Warbler: an IM and push server built on MQTT.")
	fmt.Fprintln(w, "\nUsage: warbler COMMAND [flags] [args]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := commands[n]
		fmt.Fprintf(w, "  %-16s %s\n", n, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'warbler COMMAND -h' for the flags of a command.")
}

// parseAnywhere parses flags that may be interleaved with positional
// arguments ("user create alice --app demo" as well as "--app demo alice")
// and returns the positional arguments in order. "--" ends flag parsing.
func parseAnywhere(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func newFlagSet(env *cliEnv, c *command) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: warbler %s %s\n\n%s\n\nFlags:\n", c.name, c.args, c.summary)
		fs.PrintDefaults()
	}
	return fs
}
