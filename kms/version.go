package kms

import "runtime/debug"

// Version is kms-plugin's release version, set at build time with
// -ldflags "-X github.com/kms-plugin/kms-plugin/kms.Version=v1.2.3". A
// binary built without it (go build, go install) reports its module
// version and VCS revision from the build info instead of "dev".
var Version = ""

func init() {
	if Version == "" {
		Version = buildVersion(debug.ReadBuildInfo())
	}
}

// buildVersion derives a version from build info: the main module's
// version when it is a release (go install ...@v1.2.3), else the VCS
// revision (12 digits, "-dirty" if the tree had changes), else "dev".
func buildVersion(info *debug.BuildInfo, ok bool) string {
	if !ok {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}
