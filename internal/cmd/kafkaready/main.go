// Command kafkaready waits until a Kafka broker answers a metadata request, for
// stack/stack.sh. It gives up when the timeout passes or when the broker's process (-pid)
// has exited, so a broker that crashed at start fails fast instead of being waited for.
package main

import (
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/kafkaconf"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "comma-separated broker addresses")
	timeout := flag.Duration("timeout", 60*time.Second, "how long to wait")
	pid := flag.Int("pid", 0, "give up when this process has exited (0: do not watch)")
	flag.Parse()

	deadline := time.Now().Add(*timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if *pid > 0 && syscall.Kill(*pid, 0) != nil {
			fmt.Fprintf(os.Stderr, "kafkaready: broker process %d exited\n", *pid)
			os.Exit(1)
		}
		if lastErr = ping(kafkaconf.Brokers(*brokers)); lastErr == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "kafkaready: no metadata from %s within %s: %v\n", *brokers, *timeout, lastErr)
	os.Exit(1)
}

func ping(brokers []string) error {
	c := kafkaconf.Consumer("kafkaready")
	c.Metadata.Retry.Max = 0
	client, err := sarama.NewClient(brokers, c)
	if err != nil {
		return err
	}
	defer client.Close()
	if err := client.RefreshMetadata(); err != nil {
		return err
	}
	if _, err := client.Controller(); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	return nil
}
