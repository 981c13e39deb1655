//go:build !unix

package main

import "os"

// lockReplayJournal does nothing where flock(2) does not exist: two replays sharing a journal at
// once are then not prevented.
func lockReplayJournal(*os.File) error { return nil }
