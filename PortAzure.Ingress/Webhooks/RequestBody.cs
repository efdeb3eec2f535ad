namespace PortAzure.Ingress.Webhooks;

/// <summary>Reads a webhook call's body, holding no more memory than the bytes that have arrived.</summary>
internal static class RequestBody
{
    // Most Port runs fit: one exact allocation. Larger ones grow as their bytes arrive.
    internal const int InitialBufferBytes = 16 * 1024;

    /// <summary>Reads at most <paramref name="limit"/> bytes; <see langword="null"/> when the body is longer.</summary>
    /// <exception cref="BadHttpRequestException">The body ended before its declared length.</exception>
    public static async Task<byte[]?> ReadAsync(Stream body, long? contentLength, long limit, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (contentLength is { } length)
        {
            if (length > limit)
            {
                return null;
            }
            // Not new byte[length] up front: the length is the client's claim, made before it sends a byte and
            // before its signature is checked. A client declaring 1 MiB and trickling the body would pin 1 MiB per
            // connection for as long as Kestrel's minimum data rate lets it.
            var buffer = new byte[(int)Math.Min(length, InitialBufferBytes)];
            var filled = 0;
            while (filled < length)
            {
                if (filled == buffer.Length)
                {
                    Array.Resize(ref buffer, (int)Math.Min(length, buffer.Length * 2L));
                }
                var read = await body.ReadAsync(buffer.AsMemory(filled), cancellationToken);
                if (read == 0)
                {
                    throw new BadHttpRequestException("The body ended before its Content-Length.", StatusCodes.Status400BadRequest);
                }
                filled += read;
            }
            return buffer;
        }
        // Chunked: read until the end or one byte past the limit, whichever comes first.
        using var chunked = new MemoryStream();
        var chunk = new byte[InitialBufferBytes];
        int count;
        while ((count = await body.ReadAsync(chunk, cancellationToken)) > 0)
        {
            if (chunked.Length + count > limit)
            {
                return null;
            }
            chunked.Write(chunk, 0, count);
        }
        return chunked.ToArray();
    }
}
