using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// A peer that takes every connection, reads the HTTP/1.1 request on it whole (its headers and a Content-Length body) and
/// closes it without answering: Azure or a proxy losing the answer, a Dispatcher killed mid-call. The request was sent each
/// time. Its port stays bound until disposed (a freed port could meanwhile be taken by another test's server).
/// </summary>
public sealed class DroppingServer : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private int _connections;
    private int _requests;

    private DroppingServer()
    {
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _loop = Task.Run(DropAsync);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    /// <summary>Connections taken.</summary>
    public int Connections => Volatile.Read(ref _connections);

    /// <summary>Requests read whole before their connection was closed.</summary>
    public int Requests => Volatile.Read(ref _requests);

    public static DroppingServer Start() => new();

    private async Task DropAsync()
    {
        try
        {
            while (true)
            {
                using var socket = await _listener.AcceptSocketAsync(_stop.Token);
                Interlocked.Increment(ref _connections);
                try
                {
                    if (await ReadRequestAsync(socket, _stop.Token))
                    {
                        Interlocked.Increment(ref _requests);
                    }
                }
                catch (SocketException)
                {
                    // The client gave up on this connection first: the next one is still taken.
                }
                socket.Close();
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Reads one request; false when the connection ended before all of it came.</summary>
    private static async Task<bool> ReadRequestAsync(Socket socket, CancellationToken cancellationToken)
    {
        var received = new List<byte>();
        var buffer = new byte[16 * 1024];
        while (true)
        {
            var text = Encoding.ASCII.GetString([.. received]);
            var end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (end >= 0)
            {
                var length = text[..end].Split("\r\n").Where(l => l.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase))
                    .Select(l => int.Parse(l["Content-Length:".Length..].Trim(), CultureInfo.InvariantCulture)).FirstOrDefault();
                if (received.Count >= end + 4 + length)
                {
                    return true;
                }
            }
            var read = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
            if (read == 0)
            {
                return false;
            }
            received.AddRange(buffer.AsSpan(0, read));
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop;
        _listener.Stop();
        _stop.Dispose();
    }
}
