// Node.js `net` echo server for `make bench` (a peer, from Debian's nodejs).
// Usage: node nodeecho.js [PORT]; prints "listening on 127.0.0.1:PORT".
'use strict';
const net = require('net');

const server = net.createServer({ noDelay: true }, (sock) => {
  sock.on('error', () => sock.destroy());
  sock.pipe(sock);      // pipe() pauses reading while the output is full
});
server.listen({ host: '127.0.0.1', port: Number(process.argv[2] || 0), backlog: 4096 }, () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
