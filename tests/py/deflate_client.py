"""A walcast client on Python `websockets` with permessage-deflate (its default).

    python3 deflate_client.py <ws url> <session jwt> <channel>...

Prints the negotiated extension, then authenticates, joins every channel and prints `ready`.
Each stdin line is sent as a `chan_in` to the first channel. Every server message after that is
printed as one JSON line, until stdin closes.
"""

import json
import sys
import threading

from websockets.sync.client import connect


def main():
    url, jwt, channels = sys.argv[1], sys.argv[2], sys.argv[3:]
    with connect(url, compression="deflate", max_size=None) as ws:
        print(json.dumps({"extensions": ws.response.headers.get("Sec-WebSocket-Extensions", "")}), flush=True)
        init = json.loads(ws.recv())
        sid = init["data"]
        ws.send(json.dumps({"sid": sid, "type": "auth", "data": jwt, "channel": "", "token": ""}))
        token = json.loads(ws.recv())["data"]
        for channel in channels:
            ws.send(json.dumps({"sid": sid, "type": "join", "data": channel, "channel": "", "token": token}))
            reply = json.loads(ws.recv())
            assert reply["type"] == "joined", reply
        print(json.dumps({"ready": sid}), flush=True)

        def publish():
            for line in sys.stdin:
                ws.send(json.dumps({"sid": sid, "type": "chan_in", "data": line.rstrip("\n"),
                                    "channel": channels[0], "token": token}))
            ws.close()

        threading.Thread(target=publish, daemon=True).start()
        try:
            for message in ws:
                print(message, flush=True)
        except Exception as error:  # the test reads the reason from stdout
            print(json.dumps({"ended": repr(error)}), flush=True)


if __name__ == "__main__":
    main()
