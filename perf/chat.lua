-- wrk script: a tiny non-streamed chat completion through the gateway (key from AI_GATEWAY_KEY).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("AI_GATEWAY_KEY") or "")
wrk.body = '{"model":"llama3","messages":[{"role":"user","content":"Say hello"}],"stream":false}'
