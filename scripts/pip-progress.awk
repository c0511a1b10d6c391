# `make install`'s view of pip's output: each package numbered against the lock's count (awk -v n=N),
# pip's per-file detail dropped, and a line when pip starts unpacking (it prints nothing more until done).
/^(Collecting|Processing) / {
    k++
    sub(/ \(from -r requirements\.lock \(line [0-9]+\)\)/, "")
    printf "[%d/%d] %s\n", k, n, $0
    fflush()
    next
}
/^Installing collected packages/ {
    printf "unpacking %d packages into .venv (pip prints nothing more until it is done) ...\n", k
    fflush()
    next
}
/^(Requirement already satisfied|  )/ { next }
{ print; fflush() }
