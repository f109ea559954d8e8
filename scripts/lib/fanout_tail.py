"""Splits each fan-out round's latency into the server's part and the client's.

fanout_tail.py EVENTS CLIENT_TRACE ROUNDS

EVENTS: one line per system call of the server, `TIME S|R FD` (seconds, CLOCK_MONOTONIC; S a
send, R a receive), from `perf record -k CLOCK_MONOTONIC` of its send and receive tracepoints.
CLIENT_TRACE: the example's per-round trace (`$FANOUT_TRACE.TARGET`: µs after the send, the
reply, the first and the last copy). A subscriber's socket gets its subscription's reply, then
one push a round; the publisher's one reply a round and every request.
"""
import collections
import sys


def main(events_path, trace_path, rounds):
    sends, recvs = collections.defaultdict(list), collections.defaultdict(list)
    for line in open(events_path):
        at, kind, fd = line.split()
        (sends if kind == "S" else recvs)[int(fd)].append(float(at))
    subscribers = [fd for fd, ts in sends.items() if len(ts) == rounds + 1]
    publishers = [fd for fd, ts in sends.items() if len(ts) == rounds]
    if not subscribers or not publishers:
        sys.exit("fanout_tail: no subscriber or publisher sockets found in the events")
    publisher = max(publishers, key=lambda fd: len(recvs.get(fd, [])))
    client = [tuple(map(int, line.split())) for line in open(trace_path)]
    rows = []
    for k in range(min(rounds, len(client))):
        pushes = [sends[fd][k + 1] for fd in subscribers]
        first, last = min(pushes), max(pushes)
        request = max((t for t in recvs[publisher] if t <= first), default=first)
        _, client_first, client_last = client[k]
        server_last = (last - request) * 1e3
        rows.append((
            (first - request) * 1e3,
            server_last,
            (sends[publisher][k] - request) * 1e3,
            client_first / 1e3,
            client_last / 1e3,
            client_last / 1e3 - server_last,
        ))
    names = [
        "server: request read -> first push written",
        "server: request read -> last push written",
        "server: request read -> its reply written",
        "client: sent -> first copy",
        "client: sent -> last copy",
        "client's last copy - server's last push (same round)",
    ]
    print(f"{len(subscribers)} subscriber sockets seen, {len(rows)} rounds (ms)")
    print("| | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    for i, name in enumerate(names):
        column = sorted(row[i] for row in rows)
        pick = lambda q: column[min(len(column) - 1, int(len(column) * q))]
        print(f"| {name} | {pick(.5):.2f} | {pick(.9):.2f} | {pick(.99):.2f} | {column[-1]:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
