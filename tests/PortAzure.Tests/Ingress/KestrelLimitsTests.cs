using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class KestrelLimitsTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Start_NoKestrelConfiguration_AppliesTheIngressDefaults()
    {
        await using var relay = await Relay.StartAsync(c => c["Ingress:MaxBodyBytes"] = "100000", dispatchers: 0);

        var limits = relay.Ingress.Services.GetRequiredService<IOptions<KestrelServerOptions>>().Value.Limits;

        Assert.Equal(32 * 1024, limits.MaxRequestHeadersTotalSize);
        Assert.Equal(100, limits.MaxRequestHeaderCount);
        Assert.Equal(TimeSpan.FromSeconds(10), limits.RequestHeadersTimeout);
        Assert.Equal(4096, limits.MinRequestBodyDataRate!.BytesPerSecond);
        Assert.Equal(TimeSpan.FromSeconds(5), limits.MinRequestBodyDataRate.GracePeriod);
        Assert.Equal(100_000 + (64 * 1024), limits.MaxRequestBodySize);
        Assert.Null(limits.MaxConcurrentConnections);
    }

    [Fact]
    public async Task Start_KestrelLimitsSection_OverridesEveryDefault()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Kestrel:Limits:MaxRequestHeadersTotalSize"] = "8192";
            c["Kestrel:Limits:MaxRequestHeaderCount"] = "20";
            c["Kestrel:Limits:RequestHeadersTimeout"] = "00:00:03";
            c["Kestrel:Limits:MinRequestBodyDataRate:BytesPerSecond"] = "100";
            c["Kestrel:Limits:MinRequestBodyDataRate:GracePeriod"] = "00:00:02";
            c["Kestrel:Limits:MaxRequestBodySize"] = "2000000";
            c["Kestrel:Limits:MaxConcurrentConnections"] = "5000";
        }, dispatchers: 0);

        var limits = relay.Ingress.Services.GetRequiredService<IOptions<KestrelServerOptions>>().Value.Limits;

        Assert.Equal(8192, limits.MaxRequestHeadersTotalSize);
        Assert.Equal(20, limits.MaxRequestHeaderCount);
        Assert.Equal(TimeSpan.FromSeconds(3), limits.RequestHeadersTimeout);
        Assert.Equal(100, limits.MinRequestBodyDataRate!.BytesPerSecond);
        Assert.Equal(TimeSpan.FromSeconds(2), limits.MinRequestBodyDataRate.GracePeriod);
        Assert.Equal(2_000_000, limits.MaxRequestBodySize);
        Assert.Equal(5000L, limits.MaxConcurrentConnections);

        var flood = Enumerable.Range(0, 25).Select(i => RawRequest.HeaderLine($"X-Flood-{i}", "x")).ToList();
        var response = await RawHttp.SendAsync(relay.Ingress.BaseAddress, new RawRequest("GET", "/health"u8.ToArray(), flood, [], RawFraming.None), Timeout);
        Assert.Equal(431, response.Status);
        using var health = await relay.Ingress.Client.GetAsync("/alive");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }

    [Fact]
    public async Task Connect_PastMaxConcurrentConnections_IsClosedWithoutAnAnswerWhileIdleHeldOnesAreServed()
    {
        await using var relay = await Relay.StartAsync(c => c["Kestrel:Limits:MaxConcurrentConnections"] = "3", dispatchers: 0);
        var endpoint = new IPEndPoint(IPAddress.Loopback, relay.Ingress.BaseAddress.Port);
        var held = new List<TcpClient>();
        using var timeout = new CancellationTokenSource(Timeout);
        try
        {
            // Three connections, each answered once and then left idle (keep-alive): admitted, and still counted.
            for (var i = 0; i < 3; i++)
            {
                var client = new TcpClient();
                held.Add(client);
                await client.ConnectAsync(endpoint);
                Assert.Equal(200, (await GetAliveAsync(client, timeout.Token)).Status);
            }

            using var refused = new TcpClient();
            await refused.ConnectAsync(endpoint);
            var answer = await ReadAnswerAsync(refused, "GET /alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"u8.ToArray());
            Assert.Equal("", answer);

            foreach (var client in held)
            {
                Assert.Equal(200, (await GetAliveAsync(client, timeout.Token)).Status);
            }
        }
        finally
        {
            held.ForEach(c => c.Dispose());
        }
    }

    private static async Task<RawResponse> GetAliveAsync(TcpClient client, CancellationToken cancellationToken)
    {
        var stream = client.GetStream();
        await stream.WriteAsync("GET /alive HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray(), cancellationToken);
        return await RawHttp.ReadResponseAsync(stream, cancellationToken);
    }

    /// <summary>Sends a request and reads until the server closes; "" when it closed without a byte.</summary>
    private static async Task<string> ReadAnswerAsync(TcpClient client, byte[] request)
    {
        using var timeout = new CancellationTokenSource(Timeout);
        var stream = client.GetStream();
        var received = new MemoryStream();
        try
        {
            await stream.WriteAsync(request, timeout.Token);
            var buffer = new byte[4096];
            int read;
            while ((read = await stream.ReadAsync(buffer, timeout.Token)) > 0)
            {
                received.Write(buffer, 0, read);
            }
        }
        catch (IOException)
        {
            // A reset: closed without an answer, as far as the client can tell.
        }
        return Encoding.ASCII.GetString(received.ToArray());
    }

    [Fact]
    public async Task Request_HeadersSentTooSlowly_ConnectionIsClosedAfterRequestHeadersTimeout()
    {
        await using var relay = await Relay.StartAsync(c => c["Kestrel:Limits:RequestHeadersTimeout"] = "00:00:01", dispatchers: 0);
        using var client = new TcpClient();
        await client.ConnectAsync(relay.Ingress.BaseAddress.Host, relay.Ingress.BaseAddress.Port);
        var stream = client.GetStream();

        // Half a request head, then nothing: a slow-headers (slowloris) client.
        await stream.WriteAsync(Encoding.ASCII.GetBytes("POST /contoso/_apis/public/distributedtask/webhooks/deploy HTTP/1.1\r\nHost: x\r\n"));
        using var cts = new CancellationTokenSource(Timeout);
        var response = await RawHttp.ReadResponseAsync(stream, cts.Token);

        // No tight time bound: Kestrel checks timeouts on a 1 s heartbeat plus 1 s of slack, and a loaded
        // machine adds more. That the configured value is the one applied is checked above.
        Assert.Equal(408, response.Status);
    }

    [Fact]
    public async Task Post_BodyTricklingAt1KBPerSecond_IsCutByTheDefaultRate()
    {
        // Above Kestrel's own 240 B/s, at which a 100 kB body would take 100 s (and a 1 MiB one over an hour).
        await using var relay = await Relay.StartAsync(dispatchers: 0);
        using var client = await StartPostAsync(relay, contentLength: 100000, firstBodyBytes: "");
        var stream = client.GetStream();
        using var stop = new CancellationTokenSource();
        var trickle = Task.Run(async () =>
        {
            var bytes = new byte[100];
            Array.Fill(bytes, (byte)' ');
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    await stream.WriteAsync(bytes, stop.Token);
                    await Task.Delay(100, stop.Token);
                }
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
            {
                // The server closed the connection, or the test is done.
            }
        });

        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(40));
        var response = await RawHttp.ReadResponseAsync(stream, cts.Token);
        await stop.CancelAsync();
        await trickle;

        Assert.Equal(408, response.Status);
        Assert.Contains("\"reason\":\"body_timeout\"", response.Text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Post_BodySentTooSlowly_IsCutByTheMinimumDataRate()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["Kestrel:Limits:MinRequestBodyDataRate:BytesPerSecond"] = "240";
            c["Kestrel:Limits:MinRequestBodyDataRate:GracePeriod"] = "00:00:02";
        }, dispatchers: 0);
        using var client = await StartPostAsync(relay, contentLength: 10000, firstBodyBytes: "{\"a\":");
        var stream = client.GetStream();

        using var cts = new CancellationTokenSource(Timeout);
        var response = await RawHttp.ReadResponseAsync(stream, cts.Token);

        Assert.Equal(408, response.Status);
        Assert.Contains("\"reason\":\"body_timeout\"", response.Text, StringComparison.Ordinal);
        using var health = await relay.Ingress.Client.GetAsync("/alive");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }

    /// <summary>A webhook POST whose head and first body bytes are sent; the rest is up to the test.</summary>
    private static async Task<TcpClient> StartPostAsync(Relay relay, int contentLength, string firstBodyBytes)
    {
        var client = new TcpClient();
        await client.ConnectAsync(relay.Ingress.BaseAddress.Host, relay.Ingress.BaseAddress.Port);
        await client.GetStream().WriteAsync(Encoding.ASCII.GetBytes(
            "POST /contoso/_apis/public/distributedtask/webhooks/deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
            $"X-Port-Signature: v1,x\r\nContent-Length: {contentLength}\r\n\r\n{firstBodyBytes}"));
        return client;
    }
}
