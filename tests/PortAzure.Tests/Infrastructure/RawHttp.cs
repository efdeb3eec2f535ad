using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PortAzure.Tests.Infrastructure;

/// <summary>How the body is framed on the wire.</summary>
public enum RawFraming
{
    /// <summary>A Content-Length header with the body's exact length.</summary>
    ContentLength,

    /// <summary>Transfer-Encoding: chunked, in chunks of <see cref="RawRequest.ChunkSize"/> bytes.</summary>
    Chunked,

    /// <summary>No framing header at all; the body (if any) is written as is.</summary>
    None,
}

/// <summary>
/// An HTTP/1.1 request exactly as it goes on the wire: the target and header lines are bytes, not
/// checked or re-encoded (Host, the framing header and <c>Connection: close</c> are added).
/// </summary>
public sealed record RawRequest(string Method, byte[] Target, IReadOnlyList<byte[]> HeaderLines, byte[] Body,
    RawFraming Framing = RawFraming.ContentLength, int ChunkSize = 16 * 1024)
{
    public static byte[] HeaderLine(string name, string value) => HeaderLine(name, Encoding.ASCII.GetBytes(value));

    public static byte[] HeaderLine(string name, byte[] value) => [.. Encoding.ASCII.GetBytes(name + ": "), .. value];
}

public sealed record RawResponse(int Status, IReadOnlyList<KeyValuePair<string, string>> Headers, byte[] Body)
{
    public string? Header(string name) =>
        Headers.Where(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)).Select(h => h.Value).FirstOrDefault();

    public string? MediaType => Header("Content-Type")?.Split(';')[0].Trim();

    public string Text => Encoding.UTF8.GetString(Body);
}

/// <summary>
/// HTTP/1.1 over a plain socket, for what HttpClient will not send: bytes it refuses in headers,
/// repeated headers, exact chunked framing, header floods, bodies the server stops reading.
/// The body is written while the response is read, as a server may answer before the body is done.
/// </summary>
public static class RawHttp
{
    private static readonly byte[] HeaderEnd = "\r\n\r\n"u8.ToArray();

    /// <param name="from">A loopback address to connect from (any of 127.0.0.0/8), to appear as another client.</param>
    public static async Task<RawResponse> SendAsync(Uri baseAddress, RawRequest request, TimeSpan timeout, IPAddress? from = null)
    {
        ArgumentNullException.ThrowIfNull(baseAddress);
        ArgumentNullException.ThrowIfNull(request);
        using var cts = new CancellationTokenSource(timeout);
        using var client = from is null ? new TcpClient() : new TcpClient(new IPEndPoint(from, 0));
        client.NoDelay = true;
        await client.ConnectAsync(baseAddress.Host, baseAddress.Port, cts.Token);
        var stream = client.GetStream();

        var writing = WriteRequestAsync(stream, baseAddress, request, cts.Token);
        try
        {
            return await ReadResponseAsync(stream, cts.Token);
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            throw new TimeoutException($"No complete response to {request.Method} {Shorten(Encoding.Latin1.GetString(request.Target))} within {timeout.TotalSeconds} s.");
        }
        finally
        {
            client.Close();
            try
            {
                await writing;
            }
            catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
            {
                // The server may close the connection before it has read the whole body; that is its right.
            }
        }
    }

    /// <summary>The request line and headers, CRLF-terminated, with Host and the framing header added.</summary>
    public static byte[] Head(Uri baseAddress, RawRequest request)
    {
        ArgumentNullException.ThrowIfNull(baseAddress);
        ArgumentNullException.ThrowIfNull(request);
        using var head = new MemoryStream();
        void Line(string text) => head.Write(Encoding.ASCII.GetBytes(text + "\r\n"));
        head.Write(Encoding.ASCII.GetBytes(request.Method + " "));
        head.Write(request.Target);
        Line(" HTTP/1.1");
        Line($"Host: {baseAddress.Host}:{baseAddress.Port}");
        foreach (var line in request.HeaderLines)
        {
            head.Write(line);
            head.Write("\r\n"u8);
        }
        switch (request.Framing)
        {
            case RawFraming.ContentLength:
                Line("Content-Length: " + request.Body.Length.ToString(CultureInfo.InvariantCulture));
                break;
            case RawFraming.Chunked:
                Line("Transfer-Encoding: chunked");
                break;
            default:
                break;
        }
        Line("Connection: close");
        Line("");
        return head.ToArray();
    }

    private static async Task WriteRequestAsync(NetworkStream stream, Uri baseAddress, RawRequest request, CancellationToken cancellationToken)
    {
        await stream.WriteAsync(Head(baseAddress, request), cancellationToken);
        var body = request.Body;
        if (request.Framing == RawFraming.Chunked)
        {
            for (var offset = 0; offset < body.Length; offset += request.ChunkSize)
            {
                var length = Math.Min(request.ChunkSize, body.Length - offset);
                await stream.WriteAsync(Encoding.ASCII.GetBytes(length.ToString("x", CultureInfo.InvariantCulture) + "\r\n"), cancellationToken);
                await stream.WriteAsync(body.AsMemory(offset, length), cancellationToken);
                await stream.WriteAsync("\r\n"u8.ToArray(), cancellationToken);
            }
            await stream.WriteAsync("0\r\n\r\n"u8.ToArray(), cancellationToken);
        }
        else
        {
            for (var offset = 0; offset < body.Length; offset += 64 * 1024)
            {
                await stream.WriteAsync(body.AsMemory(offset, Math.Min(64 * 1024, body.Length - offset)), cancellationToken);
            }
        }
        await stream.FlushAsync(cancellationToken);
    }

    /// <summary>Reads one final response (skipping 1xx); the body by Content-Length, chunks, or up to the close.</summary>
    public static async Task<RawResponse> ReadResponseAsync(Stream stream, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        using var reader = new Reader(stream);
        while (true)
        {
            var head = await reader.ReadUntilAsync(HeaderEnd, cancellationToken)
                ?? throw new IOException("The connection closed before a response head arrived.");
            var lines = Encoding.Latin1.GetString(head).Split("\r\n");
            var statusParts = lines[0].Split(' ', 3);
            var status = int.Parse(statusParts[1], CultureInfo.InvariantCulture);
            var headers = lines.Skip(1).Where(l => l.Length > 0)
                .Select(l => l.Split(':', 2))
                .Select(p => new KeyValuePair<string, string>(p[0].Trim(), p.Length > 1 ? p[1].Trim() : ""))
                .ToList();
            if (status is >= 100 and < 200)
            {
                continue;
            }
            var response = new RawResponse(status, headers, []);
            byte[] body;
            if (response.Header("Transfer-Encoding")?.Contains("chunked", StringComparison.OrdinalIgnoreCase) == true)
            {
                body = await reader.ReadChunkedAsync(cancellationToken);
            }
            else if (response.Header("Content-Length") is { } length)
            {
                body = await reader.ReadExactlyOrLessAsync(int.Parse(length, CultureInfo.InvariantCulture), cancellationToken);
            }
            else
            {
                body = await reader.ReadToEndAsync(cancellationToken);
            }
            return response with { Body = body };
        }
    }

    private static string Shorten(string text) => text.Length > 80 ? text[..80] + "..." : text;

    private sealed class Reader(Stream stream) : IDisposable
    {
        private readonly byte[] _buffer = new byte[16 * 1024];
        private readonly MemoryStream _pending = new();

        /// <summary>Bytes up to and without <paramref name="delimiter"/>; null on a close before it.</summary>
        public async Task<byte[]?> ReadUntilAsync(byte[] delimiter, CancellationToken cancellationToken)
        {
            while (true)
            {
                var data = _pending.ToArray();
                var index = data.AsSpan().IndexOf(delimiter);
                if (index >= 0)
                {
                    Keep(data.AsSpan(index + delimiter.Length));
                    return data[..index];
                }
                if (!await FillAsync(cancellationToken))
                {
                    return null;
                }
            }
        }

        public async Task<byte[]> ReadExactlyOrLessAsync(int count, CancellationToken cancellationToken)
        {
            while (_pending.Length < count && await FillAsync(cancellationToken))
            {
            }
            var data = _pending.ToArray();
            var taken = Math.Min(count, data.Length);
            Keep(data.AsSpan(taken));
            return data[..taken];
        }

        public async Task<byte[]> ReadToEndAsync(CancellationToken cancellationToken)
        {
            while (await FillAsync(cancellationToken))
            {
            }
            var data = _pending.ToArray();
            Keep([]);
            return data;
        }

        public async Task<byte[]> ReadChunkedAsync(CancellationToken cancellationToken)
        {
            using var body = new MemoryStream();
            while (await ReadUntilAsync("\r\n"u8.ToArray(), cancellationToken) is { } sizeLine)
            {
                var size = int.Parse(Encoding.ASCII.GetString(sizeLine).Split(';')[0].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                if (size == 0)
                {
                    break;
                }
                body.Write(await ReadExactlyOrLessAsync(size + 2, cancellationToken) is { } chunk ? chunk.AsSpan(0, Math.Min(size, chunk.Length)) : []);
            }
            return body.ToArray();
        }

        public void Dispose() => _pending.Dispose();

        private void Keep(ReadOnlySpan<byte> rest)
        {
            _pending.SetLength(0);
            _pending.Write(rest);
        }

        /// <summary>False at the end of the stream (or a reset after the server closed).</summary>
        private async Task<bool> FillAsync(CancellationToken cancellationToken)
        {
            int read;
            try
            {
                read = await stream.ReadAsync(_buffer, cancellationToken);
            }
            catch (IOException)
            {
                return false;
            }
            if (read == 0)
            {
                return false;
            }
            _pending.Write(_buffer, 0, read);
            return true;
        }
    }
}
