package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Record keeps, across restarts of the daemon, which in-kernel endpoints
// the daemon made and for whom (policy, admin, controller). The kernel
// does not say who made an endpoint: without a record, every endpoint is
// external after a restart, and the policy never removes the ones it made
// for addresses that went away while it was down.
type Record interface {
	// Load returns the recorded endpoints; none, without error, when there
	// is no record yet. An error means a record exists that cannot be
	// trusted; the service then starts without one.
	Load() ([]policy.Endpoint, error)
	// Save replaces the record with the endpoints.
	Save([]policy.Endpoint) error
}

// FileRecord is a Record in a JSON file, written atomically (a new file
// renamed over the old). A record names the boot and the network namespace
// it belongs to: after a reboot, or in another namespace, the kernel's
// endpoints are other ones, whatever their ids.
type FileRecord struct {
	Path string
	// Boot and NetNS identify this boot and network namespace (as
	// /proc/sys/kernel/random/boot_id and the link /proc/self/ns/net say,
	// see CurrentBoot and CurrentNetNS).
	Boot, NetNS string
}

// recordVersion is the version of the file's format.
const recordVersion = 1

type recordFile struct {
	Version   int              `json:"version"`
	Boot      string           `json:"boot_id"`
	NetNS     string           `json:"netns"`
	Endpoints []recordEndpoint `json:"endpoints"`
}

type recordEndpoint struct {
	ID      uint8         `json:"id"`
	Addr    netip.Addr    `json:"addr"`
	Port    uint16        `json:"port,omitempty"`
	Flags   string        `json:"flags"`
	Ifindex int32         `json:"ifindex,omitempty"`
	Origin  policy.Origin `json:"origin"`
}

// ErrRecordSetAside is wrapped by FileRecord.Load's error when the file
// was not trusted and was renamed to Path + ".bad".
var ErrRecordSetAside = errors.New("record set aside")

// Load reads the record. A missing file is no record. A file that cannot
// be parsed, is empty, or belongs to another boot or network namespace is
// renamed to Path + ".bad" (replacing an older one there) and the error
// says why.
func (r *FileRecord) Load() ([]policy.Endpoint, error) {
	data, err := os.ReadFile(r.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", r.Path, err)
	}
	eps, why := r.parse(data)
	if why == "" {
		return eps, nil
	}
	bad := r.Path + ".bad"
	if err := os.Rename(r.Path, bad); err != nil {
		return nil, fmt.Errorf("record %s: %s, and setting it aside failed: %w", r.Path, why, err)
	}
	return nil, fmt.Errorf("record %s: %s: moved to %s: %w", r.Path, why, bad, ErrRecordSetAside)
}

// parse decodes and checks the file's content; why says what is wrong.
func (r *FileRecord) parse(data []byte) (eps []policy.Endpoint, why string) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, "empty"
	}
	var f recordFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, "unreadable: " + err.Error()
	}
	switch {
	case f.Version != recordVersion:
		return nil, fmt.Sprintf("format version %d, not %d", f.Version, recordVersion)
	case f.Boot != r.Boot:
		return nil, fmt.Sprintf("from another boot (%s)", f.Boot)
	case f.NetNS != r.NetNS:
		return nil, fmt.Sprintf("from another network namespace (%s)", f.NetNS)
	}
	for _, e := range f.Endpoints {
		flags, err := pm.ParseFlags(strings.FieldsFunc(e.Flags, func(r rune) bool { return r == ',' }))
		switch {
		case err != nil:
			return nil, fmt.Sprintf("endpoint %d: %v", e.ID, err)
		case e.ID == 0 || !e.Addr.IsValid():
			return nil, fmt.Sprintf("endpoint %d %v: no id or no address", e.ID, e.Addr)
		case !slices.Contains([]policy.Origin{policy.OriginPolicy, policy.OriginAdmin, policy.OriginController}, e.Origin):
			return nil, fmt.Sprintf("endpoint %d: origin %q", e.ID, e.Origin)
		}
		eps = append(eps, policy.Endpoint{
			Address: pm.Address{ID: e.ID, Addr: e.Addr, Port: e.Port, Flags: flags, Ifindex: e.Ifindex},
			Origin:  e.Origin,
		})
	}
	return eps, ""
}

// Save writes the record: a temporary file beside Path, synced, then
// renamed over it, so that a crash leaves the old record or the new one.
func (r *FileRecord) Save(eps []policy.Endpoint) error {
	f := recordFile{Version: recordVersion, Boot: r.Boot, NetNS: r.NetNS, Endpoints: []recordEndpoint{}}
	for _, e := range eps {
		f.Endpoints = append(f.Endpoints, recordEndpoint{
			ID: e.ID, Addr: e.Addr, Port: e.Port, Flags: e.Flags.String(), Ifindex: e.Ifindex, Origin: e.Origin,
		})
	}
	data, err := json.MarshalIndent(f, "", "\t")
	if err == nil {
		err = writeFileAtomic(r.Path, append(data, '\n'))
	}
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	return nil
}

// writeFileAtomic replaces the file at path with data: a new file beside
// it, synced, then renamed over it, so that a crash leaves the old file or
// the new one.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing to remove
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return err
}

// CurrentBoot returns this boot's id (/proc/sys/kernel/random/boot_id).
func CurrentBoot() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// CurrentNetNS returns the identity of the calling thread's network
// namespace, as "net:[4026531840]".
func CurrentNetNS() (string, error) {
	ns, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		return "", fmt.Errorf("network namespace: %w", err)
	}
	return ns, nil
}

// recorded returns the endpoints the record keeps: those the daemon made.
func recorded(eps []policy.Endpoint) []policy.Endpoint {
	var out []policy.Endpoint
	for _, e := range eps {
		if !e.Origin.Foreign() {
			e.Interface = "" // the record keeps the ifindex
			out = append(out, e)
		}
	}
	return out
}

// loadRecord gives the recorded endpoints that the kernel still has (same
// id, address and port) their origin back. What the kernel no longer has
// drops out of the record at the next save.
func (s *Service) loadRecord() {
	if s.record == nil {
		return
	}
	eps, err := s.record.Load()
	if err != nil {
		s.log.Warn("the record of the daemon's endpoints is not used: the endpoints it names count as external", "err", err)
		return
	}
	for _, e := range eps {
		s.origins[keyOf(e.Address)] = e.Origin
	}
	s.saved = eps
	if len(eps) > 0 {
		s.log.Info("record of the daemon's endpoints read", "endpoints", len(eps))
	}
}

// saveRecord writes the record when the endpoints the daemon made changed.
func (s *Service) saveRecord() {
	if s.record == nil {
		return
	}
	now := recorded(s.endpoints)
	if slices.Equal(now, s.saved) {
		return
	}
	if err := s.record.Save(now); err != nil {
		s.log.Warn("saving the record of the daemon's endpoints: after a restart they would count as external", "err", err)
		return
	}
	s.saved = now
}
