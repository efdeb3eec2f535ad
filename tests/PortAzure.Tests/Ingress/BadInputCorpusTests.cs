using System.Net;
using System.Text.Json;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress;

/// <summary>One relay (no Dispatcher) shared by every corpus case; each case starts and must end with an empty database.</summary>
public sealed class CorpusRelay : IAsyncLifetime
{
    public Relay Relay { get; private set; } = null!;

    public async Task InitializeAsync() => Relay = await Relay.StartAsync(dispatchers: 0);

    public async Task DisposeAsync() => await Relay.DisposeAsync();

    public async Task<List<RedisKey>> KeysAsync() =>
        await Relay.Redis.GetServer(Relay.Redis.GetEndPoints()[0]).KeysAsync(Relay.Db.Database).ToListAsync();

    public async Task ClearAsync() => await Relay.Db.KeyDeleteAsync([.. await KeysAsync()]);
}

public class BadInputCorpusTests(CorpusRelay fixture) : IClassFixture<CorpusRelay>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(15);

    public static TheoryData<string> Cases()
    {
        var data = new TheoryData<string>();
        foreach (var name in BadInputCorpus.All.Keys)
        {
            data.Add(name);
        }
        return data;
    }

    [Fact]
    public void Corpus_HasAtLeastFortyDistinctCases() => Assert.True(BadInputCorpus.All.Count >= 40, $"only {BadInputCorpus.All.Count} cases");

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Post_BadInput_AnswersExpectedProblemWritesNothingAndStaysHealthy(string name)
    {
        var relay = fixture.Relay;
        var @case = BadInputCorpus.All[name];
        // A failed case before this one may have left its good run behind.
        await fixture.ClearAsync();

        var response = await RawHttp.SendAsync(relay.Ingress.BaseAddress, BadInputCorpus.Build(@case), Timeout);

        Assert.True(@case.Status == response.Status, $"{name}: expected {@case.Status}, got {response.Status}: {Shorten(response.Text)}");
        if (!@case.Kestrel)
        {
            Assert.Equal("application/problem+json", response.MediaType);
            using var problem = JsonDocument.Parse(response.Body);
            Assert.Equal(@case.Reason, problem.RootElement.GetProperty("reason").GetString());
            Assert.Equal(@case.Status, problem.RootElement.GetProperty("status").GetInt32());
        }
        Assert.Empty(await fixture.KeysAsync());

        // Polled: on a loaded machine the Redis check inside /health can miss its own timeout once.
        await Eventually.HoldsAsync(async () =>
        {
            using var health = await relay.Ingress.Client.GetAsync("/health");
            return health.StatusCode == HttpStatusCode.OK;
        }, Timeout, $"{name}: /health to answer 200");
        using var good = await relay.SendRunAsync(TestRuns.Body(TestRuns.NewRunId()));
        Assert.Equal(HttpStatusCode.Accepted, good.StatusCode);
        await fixture.ClearAsync();
    }

    private static string Shorten(string text) => text.Length > 300 ? text[..300] + "..." : text;
}
