import time, asyncio
from tests.observability.test_degradation import *  # noqa
from tests.observability import test_degradation as td

async def test_probe(external):
    srv, redis, (a_key, b_key, c_key) = external
    receivers = [await Device.connect(srv, b_key), await Device.connect(srv, c_key)]
    a = await Device.connect(srv, a_key)
    redis.kill()
    await await_until(td._redis_down(srv), timeout=20, what="status 503")
    ids = [await a.publish("quiet") for _ in range(5)]
    async def answered(): return a.answered(ids)
    await await_until(answered, timeout=20)
    t0=time.monotonic()
    redis.start()
    for r in receivers:
        try:
            await td._all_delivered(r, "quiet", td._acked(a, "quiet"))
            print("delivered after", time.monotonic()-t0)
        except AssertionError:
            print("NOT delivered", r.events)
    print(srv.log()[-3000:])
