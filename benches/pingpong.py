"""Loopback round-trip floor: two processes bounce a 150-byte message over
TCP (TCP_NODELAY), one at a time. No broker involved: this is what one
request/response can cost on this machine at best, the yardstick for
`spool bench --batch-size 1 --in-flight 1`.

    python3 benches/pingpong.py
"""
import socket, time, os, sys
N=20000
srv=socket.socket(); srv.bind(('127.0.0.1',0)); srv.listen(1); port=srv.getsockname()[1]
if os.fork()==0:
    c,_=srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
    while True:
        d=c.recv(4096)
        if not d: os._exit(0)
        c.sendall(d)
s=socket.create_connection(('127.0.0.1',port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
msg=b'x'*150
lat=[]
for i in range(N):
    t=time.perf_counter(); s.sendall(msg); s.recv(4096); lat.append(time.perf_counter()-t)
lat.sort()
print("ping-pong: %.0f/s p50 %.1f us p99 %.1f us" % (N/sum(lat), lat[N//2]*1e6, lat[int(N*0.99)]*1e6))
