package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/schema"
)

func TestMigrate(t *testing.T) {
	url := testenv.DatabaseURL(t)
	files, err := fs.Glob(schema.Migrations, "migrations/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("schema at version %d\n", len(files)) // versions are numbered from 1
	var out bytes.Buffer
	for i := 0; i < 2; i++ { // a second run finds nothing to do
		out.Reset()
		err := run(context.Background(), []string{"migrate"}, envconf.Map(map[string]string{"DATABASE_URL": url}), &out, &out)
		if err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if out.String() != want {
			t.Errorf("run %d printed %q, want %q", i+1, out.String(), want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"migrate", "extra"}, {"migrate", "--bogus"}} {
		var out bytes.Buffer
		err := run(context.Background(), args, envconf.Map(nil), &out, &out)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
	}
}
