package diag

import "testing"

// BenchmarkDecode decodes one real message of each kind.
func BenchmarkDecode(b *testing.B) {
	raw := loadCaptured(b)
	b.Run("Conn", func(b *testing.B) {
		m := raw["conn-client-v4"]
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeConn(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Subflow", func(b *testing.B) {
		m := raw["sf-client-join-v4"]
		b.ReportAllocs()
		for b.Loop() {
			if _, ok, err := decodeSubflow(m); !ok || err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("PlainTCP", func(b *testing.B) {
		m := raw["tcp-plain-client"]
		b.ReportAllocs()
		for b.Loop() {
			if _, ok, err := decodeSubflow(m); ok || err != nil {
				b.Fatal(err)
			}
		}
	})
}
