//go:build unix

package main

import (
	"errors"
	"os"
	"syscall"
)

// lockReplayJournal takes an exclusive lock on f, released when f is closed, so that two replays
// never share a journal.
func lockReplayJournal(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errors.New("in use by another replay")
	}
	return err
}

// syncDirectory fsyncs directory dir: fsync of a new file makes its contents durable, not
// its name, which lives in the directory.
func syncDirectory(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
