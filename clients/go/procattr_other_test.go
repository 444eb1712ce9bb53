//go:build !linux

package dhashmap

import (
	"os"
	"os/exec"
)

func configureProcess(*exec.Cmd)     {}
func terminateProcess(cmd *exec.Cmd) { _ = cmd.Process.Signal(os.Interrupt) }
func killProcess(cmd *exec.Cmd)      { _ = cmd.Process.Kill() }
