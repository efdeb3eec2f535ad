using System.Net;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Dispatcher;

public class ReplicaTests
{
    [Fact]
    public async Task TwoDispatchers_SideBySide_NoDeliveryPostedByBoth()
    {
        await using var relay = await Relay.StartAsync(dispatchers: 2);
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 20 });
        var runIds = Enumerable.Range(0, 300).Select(_ => TestRuns.NewRunId()).ToList();

        foreach (var batch in runIds.Chunk(50))
        {
            var responses = await Task.WhenAll(batch.Select(r => relay.SendRunAsync(TestRuns.Body(r))));
            Assert.All(responses, r => Assert.Equal(HttpStatusCode.Accepted, r.StatusCode));
        }
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 300, TimeSpan.FromSeconds(60), "300 runs delivered");
        await Task.Delay(1000);

        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(300, requests.Count);
        Assert.Equal(300, requests.Select(r => r.Header("Idempotency-Key")).Distinct().Count());
        var consumers = await relay.Db.StreamConsumerInfoAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup);
        Assert.Equal(2, consumers.Length);
    }
}
