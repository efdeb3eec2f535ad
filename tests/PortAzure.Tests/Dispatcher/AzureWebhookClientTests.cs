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
}
