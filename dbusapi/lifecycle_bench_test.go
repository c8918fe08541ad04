package dbusapi

import (
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// BenchmarkPublishLifecycle measures what the daemon publishes for one
// connection's life in the endpoints policy, as the service loop hands it
// over (one op): ConnectionAdded, the State change, two subflows
// established with their Subflows changes, ConnectionRemoved; each event's
// notifications then written to the bus, as they are when the kernel's
// events come one at a time. -benchmem shows the allocations per
// connection, which make the garbage the daemon collects.
func BenchmarkPublishLifecycle(b *testing.B) {
	bus := dbustest.StartBus(b)
	srv, err := New(dialServer(b, bus), newFakeBackend(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	c := conn1
	c.State = service.StateCreated
	c.Subflows = c.Subflows[:1]
	c.RemoteAddresses, c.AnnouncedAddresses = nil, []service.AnnouncedAddress{}
	sf := conn1.Subflows[1]
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.ID = uint64(i + 10)
		c.State, c.Subflows = service.StateCreated, c.Subflows[:1]
		steps := [][]service.Notification{
			{service.ConnectionAdded{Connection: c}},
			{service.ConnectionChanged{Connection: lifecycleEstablished(c), Changed: []string{"State"}}},
			{service.SubflowEvent{ConnectionID: c.ID, Kind: service.SubflowEstablished, Subflow: sf},
				service.ConnectionChanged{Connection: lifecycleSubflows(c, sf), Changed: []string{"Subflows"}}},
			{service.SubflowEvent{ConnectionID: c.ID, Kind: service.SubflowEstablished, Subflow: sf},
				service.ConnectionChanged{Connection: lifecycleSubflows(c, sf, sf), Changed: []string{"Subflows"}}},
			{service.ConnectionRemoved{Connection: c}},
		}
		for _, step := range steps {
			for _, n := range step {
				srv.Publish(n)
			}
			if !srv.em.flush(5 * time.Second) {
				b.Fatal("signals not sent")
			}
		}
	}
}

func lifecycleEstablished(c service.Connection) service.Connection {
	c.State = service.StateEstablished
	return c
}

func lifecycleSubflows(c service.Connection, sfs ...service.Subflow) service.Connection {
	c.State = service.StateEstablished
	c.Subflows = append(append([]service.Subflow{}, c.Subflows[:1]...), sfs...)
	return c
}
