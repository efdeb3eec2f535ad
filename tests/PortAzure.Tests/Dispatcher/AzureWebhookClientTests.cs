using PortAzure.Dispatcher.Delivery;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Dispatcher;

public class AzureWebhookClientTests
{
    [Theory]
    [InlineData("https://dev.azure.com", "https://dev.azure.com/contoso/_apis/public/distributedtask/webhooks/deploy?api-version=6.0-preview")]
    [InlineData("https://dev.azure.com/", "https://dev.azure.com/contoso/_apis/public/distributedtask/webhooks/deploy?api-version=6.0-preview")]
    [InlineData("http://127.0.0.1:5199/prefix/", "http://127.0.0.1:5199/prefix/contoso/_apis/public/distributedtask/webhooks/deploy?api-version=6.0-preview")]
    public void BuildUri_ValidTarget_AppendsAzurePathToTheBaseUrl(string baseUrl, string expected)
    {
        Assert.Equal(expected, AzureWebhookClient.BuildUri(new Uri(baseUrl), "contoso", "deploy").AbsoluteUri);
    }

    [Theory]
    [InlineData("..", "deploy")]
    [InlineData("contoso", "..")]
    [InlineData("contoso%2F..", "deploy")]
    [InlineData("contoso/evil", "deploy")]
    [InlineData("contoso", "deploy?x=1")]
    [InlineData("contoso", "deploy#x")]
    [InlineData("evil.com@contoso", "deploy")]
    [InlineData("contoso", "dép")]
    [InlineData("", "deploy")]
    public void BuildUri_PathTricks_AreRefused(string org, string webhook)
    {
        Assert.Throws<ArgumentException>(() => AzureWebhookClient.BuildUri(new Uri("https://dev.azure.com"), org, webhook));
    }

    [Fact]
    public async Task Dispatcher_EntryForATargetOutsideTheList_IsDeadLetteredWithoutAnyPost()
    {
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:Targets:0:Org"] = TestRuns.Org;
            c["AzureDevOps:Targets:0:Webhook"] = TestRuns.Webhook;
        });
        // Written straight into the stream, as if by an older Ingress with another list.
        var entry = new DeliveryEntry("d_" + Guid.NewGuid().ToString("N"), TestRuns.Org, "not-listed", TestRuns.Body(TestRuns.NewRunId()),
            "k", null, DateTimeOffset.UtcNow, null, null);
        await relay.Db.StreamAddAsync(RedisKeys.Stream, entry.ToStreamFields());
        await relay.Redis.GetSubscriber().PublishAsync(RedisChannel.Literal(RedisKeys.WakeChannel), "x");

        await Eventually.HoldsAsync(async () => await relay.Db.SortedSetLengthAsync(RedisKeys.DeadLetters) == 1, TimeSpan.FromSeconds(20), "dead-lettered");

        Assert.Empty(await relay.EmulatorApi.RequestsAsync());
        Assert.Equal("target_not_allowed", (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.LastError));
        Assert.Contains("AzureDevOps:Targets", (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(entry.DeliveryId), DeliveryRecord.Hint), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Dispatcher_TargetWithAnEmptySecret_SignsWithTheClientSecret()
    {
        // An empty per-target secret (an empty secretKeyRef, a "" placeholder) means "not set", never an empty HMAC key.
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:Targets:0:Org"] = TestRuns.Org;
            c["AzureDevOps:Targets:0:Webhook"] = TestRuns.Webhook;
            c["AzureDevOps:Targets:0:Secret"] = "";
        });

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);

        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State) is DeliveryStates.Delivered or DeliveryStates.DeadLettered,
            TimeSpan.FromSeconds(20), "the run is finished");
        Assert.Equal(DeliveryStates.Delivered, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State));
    }

    [Fact]
    public async Task Dispatcher_ConnectionThatNeverCompletes_IsRetriedAsAConnectionFailure()
    {
        // A listener that takes the TCP connection and never answers the TLS handshake: the handler's connect
        // timeout (10 s) fires before the request timeout, and ends in a cancellation, not an HttpRequestException.
        using var silent = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        silent.Start();
        var port = ((System.Net.IPEndPoint)silent.LocalEndpoint).Port;
        await using var relay = await Relay.StartAsync(c =>
        {
            c["AzureDevOps:BaseUrl"] = $"https://127.0.0.1:{port}/";
            c["Dispatcher:RequestTimeoutSeconds"] = "30";
        });

        var deliveryId = await DeliveryOutcomeTests.SendAsync(relay);

        await Eventually.HoldsAsync(async () => (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.LastError) is not null,
            TimeSpan.FromSeconds(30), "the first attempt is recorded");
        Assert.Equal("connection", (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.LastError));
        Assert.Equal(DeliveryStates.Retrying, (string?)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.State));
        Assert.Equal(1, (long)await relay.Db.HashGetAsync(RedisKeys.Delivery(deliveryId), DeliveryRecord.Attempts));
    }

    [Fact]
    public void Describe_ProxyRefusedTheTunnel_MasksTheProxysUserAndPassword()
    {
        // .NET names the proxy whole (HTTPS_PROXY with credentials) when it refuses the tunnel; the text is kept in the
        // attempt log, which the operator API shows.
        var refused = new HttpRequestException(HttpRequestError.ProxyTunnelError,
            "The proxy tunnel request to proxy 'http://relayuser:S3cretPass@127.0.0.1:38123/' failed with status code '407'.");

        var text = AzureWebhookClient.Describe(refused);

        Assert.Equal("ProxyTunnelError: The proxy tunnel request to proxy 'http://***@127.0.0.1:38123/' failed with status code '407'.", text);
    }

    [Fact]
    public void Describe_ResetAfterTheRequest_NamesTheErrorAndEachMessageOnce()
    {
        var reset = new HttpRequestException(HttpRequestError.Unknown, "An error occurred while sending the request.",
            new IOException("Unable to read data from the transport connection: Connection reset by peer.",
                new System.Net.Sockets.SocketException(104)));

        // The socket's own message is already in the one above it: not repeated.
        Assert.Equal("Unknown: An error occurred while sending the request. Unable to read data from the transport connection: Connection reset by peer.",
            AzureWebhookClient.Describe(reset));
    }
}
