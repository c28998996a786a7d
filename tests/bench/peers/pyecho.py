"""Python asyncio echo server for `make bench` (a peer, from Debian's python3).

Usage: python3 pyecho.py [PORT]; prints "listening on 127.0.0.1:PORT".
"""
import asyncio
import sys


class Echo(asyncio.Protocol):
    """Writes back what it reads; stops reading while its output is full."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print("listening on 127.0.0.1:%d" % port, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
