"""The denoising loop with caching: chunked AR execution, selective forward, CFG branches."""
