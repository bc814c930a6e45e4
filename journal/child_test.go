package journal

func runCrashChild() bool { return false }
func runLockChild() bool  { return false }
