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

        await relay.SendAllAcceptedAsync(runIds);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 300, TimeSpan.FromSeconds(60), "300 runs delivered");
        await Task.Delay(1000);

        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(300, requests.Count);
        Assert.Equal(300, requests.Select(r => r.Header("Idempotency-Key")).Distinct().Count());
        // Both took part (each attempt log names its consumer): one Dispatcher delivering everything would prove nothing.
        var consumers = new HashSet<string>(StringComparer.Ordinal);
        foreach (var request in requests)
        {
            var attempt = (string)(await relay.Db.ListGetByIndexAsync(RedisKeys.Attempts(request.Header("Idempotency-Key")!), 0))!;
            consumers.Add(System.Text.Json.JsonDocument.Parse(attempt).RootElement.GetProperty("consumer").GetString()!);
        }
        Assert.Equal(2, consumers.Count);
    }
}

[Collection(HeavyTests.Name)]
public class ScaleOutTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public async Task ThreeDispatchers_ThreeThousandRuns_SpreadAcrossThemEachDeliveredOnce()
    {
        await using var relay = await Relay.StartAsync(c => c["Dispatcher:MaxConcurrency"] = "8", dispatchers: 3);
        await relay.EmulatorApi.ScriptAsync(new { delayMs = 5 });
        var runIds = Enumerable.Range(0, 3000).Select(_ => TestRuns.NewRunId()).ToList();

        await relay.SendAllAcceptedAsync(runIds);
        await Eventually.HoldsAsync(async () => (await relay.EmulatorApi.RequestsAsync()).Count >= 3000, TimeSpan.FromSeconds(120), "3,000 runs delivered");
        await Task.Delay(1000);

        var requests = await relay.EmulatorApi.RequestsAsync();
        Assert.Equal(3000, requests.Count);
        Assert.Equal(runIds.Order(), requests.Select(r => r.Header("X-Port-Run-Id")!).Order());
        var batchRead = relay.Db.CreateBatch();
        var attempts = requests.Select(r => batchRead.ListGetByIndexAsync(RedisKeys.Attempts(r.Header("Idempotency-Key")!), 0)).ToList();
        batchRead.Execute();
        var perConsumer = (await Task.WhenAll(attempts))
            .Select(a => System.Text.Json.JsonDocument.Parse((string)a!).RootElement.GetProperty("consumer").GetString())
            .GroupBy(c => c)
            .ToDictionary(g => g.Key!, g => g.Count());
        output.WriteLine(string.Join(", ", perConsumer.Select(p => $"{p.Key}: {p.Value}")));
        Assert.Equal(3, perConsumer.Count);
        Assert.All(perConsumer.Values, count => Assert.True(count >= 300, $"one Dispatcher took only {count} of 3,000"));
    }
}
