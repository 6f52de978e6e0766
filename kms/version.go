package kms

// Version is kms-plugin's release version, set at build time with
// -ldflags "-X github.com/kms-plugin/kms-plugin/kms.Version=v1.2.3".
var Version = "dev"
