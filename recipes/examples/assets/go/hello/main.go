// hello prints a greeting and its argument count; it needs only the standard library.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Printf("hello from pgimg (%s/%s, %d args)\n", runtime.GOOS, runtime.GOARCH, len(os.Args)-1)
}
