-- wrk script: a tiny non-streamed chat completion through the gateway.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"llama3","messages":[{"role":"user","content":"Say hello"}],"stream":false}'
