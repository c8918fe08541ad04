package pm

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"syscall"
	"testing"
)

func TestFlagsRoundTrip(t *testing.T) {
	for f := Flags(0); f < 1<<7; f++ {
		got, err := ParseFlags(f.Names())
		if f&^(1<<6-1) != 0 {
			// Unknown bits are named 0x.. and cannot be parsed back.
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseFlags(%v) = %v, %v; want ErrInvalid", f.Names(), got, err)
			}
			continue
		}
		if err != nil || got != f {
			t.Errorf("ParseFlags(%v) = %v, %v; want %v", f.Names(), got, err, f)
		}
	}
	if s := (FlagSignal | FlagBackup).String(); s != "signal,backup" {
		t.Errorf("String = %q", s)
	}
	if s := Flags(0x100 | 1).String(); s != "signal,0x100" {
		t.Errorf("String = %q", s)
	}
	if _, err := ParseFlags([]string{"signal", "bogus"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseFlags(bogus) err = %v, want ErrInvalid", err)
	}
}

func TestPathManagerTypeParsing(t *testing.T) {
	notExist := fmt.Errorf("open: %w", fs.ErrNotExist)
	tests := []struct {
		name    string
		files   map[string]string // missing: ErrNotExist
		want    string
		wantErr error
	}{
		{"path_manager kernel", map[string]string{sysctlPathManager: "kernel\n", sysctlPMType: "1\n"}, "kernel", nil},
		{"path_manager userspace", map[string]string{sysctlPathManager: "userspace\n"}, "userspace", nil},
		{"other path manager", map[string]string{sysctlPathManager: "bpf_thing\n"}, "bpf_thing", nil},
		{"pm_type 0", map[string]string{sysctlPMType: "0\n"}, "kernel", nil},
		{"pm_type 1", map[string]string{sysctlPMType: "1\n"}, "userspace", nil},
		{"pm_type garbage", map[string]string{sysctlPMType: "7\n"}, "", ErrInvalid},
		{"empty path_manager", map[string]string{sysctlPathManager: "\n"}, "", ErrInvalid},
		{"no mptcp", map[string]string{}, "", fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			read := func(name string) ([]byte, error) {
				if s, ok := tt.files[name]; ok {
					return []byte(s), nil
				}
				return nil, notExist
			}
			got, err := pathManagerType(read)
			if got != tt.want || (tt.wantErr == nil) != (err == nil) || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Errorf("got %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	for _, tt := range []struct {
		content string
		want    bool
		wantErr bool
	}{{"1\n", true, false}, {"0\n", false, false}, {"2\n", false, true}} {
		got, err := mptcpEnabled(func(string) ([]byte, error) { return []byte(tt.content), nil })
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("mptcpEnabled(%q) = %v, %v", tt.content, got, err)
		}
	}
	if _, err := mptcpEnabled(func(string) ([]byte, error) { return nil, notExist }); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mptcpEnabled without the file: err = %v, want fs.ErrNotExist", err)
	}
}

func TestSetPathManagerType(t *testing.T) {
	files := map[string]string{}
	write := func(exists ...string) func(string, []byte, fs.FileMode) error {
		return func(name string, b []byte, _ fs.FileMode) error {
			if !slices.Contains(exists, name) {
				return &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
			}
			files[name] = string(b)
			return nil
		}
	}
	if err := setPathManagerType("userspace", write(sysctlPathManager, sysctlPMType)); err != nil || files[sysctlPathManager] != "userspace" {
		t.Errorf("with path_manager: %v, %v", err, files)
	}
	clear(files)
	if err := setPathManagerType("kernel", write(sysctlPMType)); err != nil || files[sysctlPMType] != "0" {
		t.Errorf("with pm_type only: %v, %v", err, files)
	}
	if err := setPathManagerType("bpf", write(sysctlPathManager)); err == nil {
		t.Error("unknown path manager accepted")
	}
}

func TestErrorSentinels(t *testing.T) {
	invalidToken := &Error{Op: "announce", Errno: syscall.EINVAL, Message: "invalid token"}
	if !errors.Is(invalidToken, ErrNotFound) || !errors.Is(invalidToken, ErrUnknownToken) {
		t.Errorf("%v: want ErrNotFound and ErrUnknownToken", invalidToken)
	}
	for _, e := range []*Error{
		{Op: "remove", Errno: syscall.EINVAL, Message: "address with id 3 not found"},
		{Op: "announce", Errno: syscall.EINVAL, Message: "userspace PM not selected"},
		{Op: "announce", Errno: syscall.ENOENT},
	} {
		if errors.Is(e, ErrUnknownToken) {
			t.Errorf("%v matches ErrUnknownToken", e)
		}
	}
}

func TestResetReasonAndErrnoNames(t *testing.T) {
	for r, want := range map[ResetReason]string{0: "unspecified", 3: "administratively-prohibited", 6: "middlebox-interference", 9: "reset-9"} {
		if got := r.String(); got != want {
			t.Errorf("ResetReason(%d) = %q, want %q", r, got, want)
		}
	}
	for r, want := range map[ResetReason]bool{0: true, 2: true, 3: false, 5: true, 6: false} {
		if got := r.Transient(); got != want {
			t.Errorf("ResetReason(%d).Transient() = %v", r, got)
		}
	}
	for e, want := range map[uint32]string{0: "", 110: "ETIMEDOUT", 104: "ECONNRESET", 4095: "errno-4095"} {
		if got := ErrnoName(e); got != want {
			t.Errorf("ErrnoName(%d) = %q, want %q", e, got, want)
		}
	}
}
