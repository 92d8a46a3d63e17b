"""A client for `qwm serve` in the Python standard library only (socket, struct, json).

Written from docs/serve.md. Usage:

    from qwm_client import Client
    c = Client.unix("/tmp/qwm.sock")        # or Client.tcp("127.0.0.1", 7000)
    print(c.hello())
    c.set_goal(goal_rgb_bytes, height, width, goal_proprio)
    reply = c.act(rgb_bytes, height, width, proprio)
    for action in reply["actions"]:         # n_taken * frameskip rows of action_dim floats
        robot.apply(action)
"""

import json
import socket
import struct

MAGIC = b"QWMS"
HEADER = struct.Struct("<4sII")


class ServerError(Exception):
    """A request the server refused: `code` and `message` from its error reply."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.next_id = 0

    @classmethod
    def unix(cls, path, timeout=60.0):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        return cls(s)

    @classmethod
    def tcp(cls, host, port, timeout=60.0):
        s = socket.create_connection((host, port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(s)

    def close(self):
        self.sock.close()

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
        return bytes(buf)

    def send_raw(self, data):
        self.sock.sendall(data)

    def read_reply(self):
        magic, json_len, blob_len = HEADER.unpack(self._recv_exact(HEADER.size))
        if magic != MAGIC:
            raise ConnectionError(f"bad magic {magic!r} in a reply")
        reply = json.loads(self._recv_exact(json_len))
        self._recv_exact(blob_len)
        return reply

    def request(self, fields, payload=b""):
        self.next_id += 1
        fields = dict(fields, id=self.next_id)
        body = json.dumps(fields).encode()
        self.sock.sendall(HEADER.pack(MAGIC, len(body), len(payload)) + body + payload)
        reply = self.read_reply()
        if reply.get("id") != self.next_id:
            raise ConnectionError(f"reply id {reply.get('id')} for request {self.next_id}")
        if not reply["ok"]:
            raise ServerError(reply["error"]["code"], reply["error"]["message"])
        return reply

    def hello(self):
        return self.request({"op": "hello", "protocol": 1})

    def _frame_op(self, op, rgb, height, width, proprio):
        return self.request(
            {"op": op, "height": height, "width": width, "proprio": [float(v) for v in proprio]},
            bytes(rgb),
        )

    def set_goal(self, rgb, height, width, proprio):
        return self._frame_op("set_goal", rgb, height, width, proprio)

    def act(self, rgb, height, width, proprio):
        return self._frame_op("act", rgb, height, width, proprio)

    def observe(self, rgb, height, width, proprio):
        return self._frame_op("observe", rgb, height, width, proprio)

    def reset(self, episode=None):
        fields = {"op": "reset"}
        if episode is not None:
            fields["episode"] = episode
        return self.request(fields)

    def stats(self):
        return self.request({"op": "stats"})["stats"]

    def shutdown(self):
        return self.request({"op": "shutdown"})
