package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/relay"
)

const relayUsage = `usage: orderctl relay reanchor [--group G] [--dry-run] [--force]

reanchor   after a logical dump and restore (or a migration by logical replication) the
           relay's saved position is a transaction id of the old cluster and the relay
           stops (relay_position_invalid 1). This moves the group's position just below
           the oldest row in the outbox, so that every row still there is sent (again:
           consumers deduplicate), and prints how many. Safe while the relay runs: it
           picks the new position up within a second. Refuses a position that is valid
           for this cluster unless --force (a restore the relay cannot detect any more).
`

// runRelay is orderctl relay: wiring for relay.Reanchor.
func runRelay(ctx context.Context, args []string, databaseURL, defaultGroup string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) == 0 {
			return usageError("relay: no subcommand given (reanchor)")
		}
		fmt.Fprint(stdout, relayUsage)
		return nil
	}
	if args[0] != "reanchor" {
		return usageError(fmt.Sprintf("relay: unknown subcommand %q", args[0]))
	}
	fs := flag.NewFlagSet("relay reanchor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	group := fs.String("group", defaultGroup, "the relay's consumer group (RELAY_GROUP)")
	dryRun := fs.Bool("dry-run", false, "print what would change and change nothing")
	force := fs.Bool("force", false, "re-anchor even a position that is valid for this cluster")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err.Error())
	}
	if fs.NArg() > 0 {
		return usageError("relay reanchor takes no arguments, only flags")
	}
	db, err := postgres.Open(ctx, databaseURL, 1)
	if err != nil {
		return err
	}
	defer db.Close()
	res, err := relay.Reanchor(ctx, db, *group, relay.ReanchorOptions{DryRun: *dryRun, Force: *force})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "group %s: next transaction id of this cluster %s\n", res.Group, res.Next)
	fmt.Fprintf(stdout, "old position  %s\nnew position  %s\n", res.Old, res.New)
	fmt.Fprintf(stdout, "rows to (re)send  %d", res.Rows)
	if res.Renumbered > 0 {
		fmt.Fprintf(stdout, " (%d with transaction ids of another cluster, renumbered to be sent first)", res.Renumbered)
	}
	fmt.Fprintln(stdout)
	if len(res.OtherGroups) > 0 {
		fmt.Fprintf(stdout, "also re-anchored, as no group had read the renumbered rows: %s\n", strings.Join(res.OtherGroups, ", "))
	}
	if res.Applied {
		fmt.Fprintln(stdout, "re-anchored; the active relay resumes from the new position")
	} else {
		fmt.Fprintln(stdout, "dry run: nothing changed")
	}
	return nil
}
