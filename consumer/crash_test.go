package consumer_test

const childEnv = "RK_CONSUMER_CRASH_CHILD"

func crashChild() int { return 0 }
