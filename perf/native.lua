-- wrk script: the same tiny chat sent straight to the emulator's native endpoint.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"llama3","messages":[{"role":"user","content":"Say hello"}],"stream":false}'
