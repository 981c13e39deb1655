//go:build !unix

package main

import "os"

// lockReplayJournal does nothing where flock(2) does not exist: two replays sharing a journal at
// once are then not prevented.
func lockReplayJournal(*os.File) error { return nil }

// syncDirectory does nothing where a directory cannot be opened for fsync (Windows): there
// a new journal's name is as durable as the file system makes it.
func syncDirectory(string) error { return nil }
