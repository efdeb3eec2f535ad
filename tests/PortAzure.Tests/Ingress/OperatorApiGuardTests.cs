using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

/// <summary>
/// One relay (Ingress with the operator key, one Dispatcher) and a second Ingress with no key that
/// proxies to the same Dispatcher; the Dispatcher's request count shows which calls reached it.
/// </summary>
public sealed class OperatorApiRelay : IAsyncLifetime
{
    public Relay Relay { get; private set; } = null!;

    /// <summary>An Ingress with no Admin:ApiKey, in front of the same Dispatcher.</summary>
    public TestHost ClosedIngress { get; private set; } = null!;

    public string DeliveryId { get; private set; } = null!;

    public string RunId { get; } = TestRuns.NewRunId();

    public MetricCollector<double> DispatcherRequests { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Relay = await Relay.StartAsync();
        var config = new Dictionary<string, string?>(Relay.Config)
        {
            ["Admin:ApiKey"] = "",
            ["services:dispatcher:http:0"] = Relay.Dispatcher.BaseAddress.ToString().TrimEnd('/'),
        };
        ClosedIngress = await TestHost.StartIngressAsync(config);
        using var accepted = await Relay.SendRunAsync(TestRuns.Body(RunId));
        accepted.EnsureSuccessStatusCode();
        DeliveryId = (await accepted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("deliveryId").GetString()!;
        DispatcherRequests = new MetricCollector<double>(Relay.Dispatcher.Services.GetRequiredService<IMeterFactory>(),
            "Microsoft.AspNetCore.Hosting", "http.server.request.duration");
    }

    public async Task DisposeAsync()
    {
        DispatcherRequests.Dispose();
        await ClosedIngress.DisposeAsync();
        await Relay.DisposeAsync();
    }

    public string Resolve(string path) => path.Replace("{deliveryId}", DeliveryId, StringComparison.Ordinal).Replace("{runId}", RunId, StringComparison.Ordinal);
}

public class OperatorApiGuardTests(OperatorApiRelay fixture) : IClassFixture<OperatorApiRelay>
{
    private const string UnknownDelivery = "d_00000000000000000000000000000000";

    /// <summary>Every operator route the Ingress proxies, with the status a right key gets.</summary>
    public static TheoryData<string, string, int> Routes() => new()
    {
        { "GET", "/api/deliveries/{deliveryId}", 200 },
        { "GET", $"/api/deliveries/{UnknownDelivery}", 404 },
        { "GET", "/api/deliveries?runId={runId}", 200 },
        { "GET", "/api/deadletters", 200 },
        { "POST", "/api/deadletters/replay", 200 },
        // The two that replay or discard one run: an unknown id, so that a right key changes nothing in the fixture.
        { "POST", $"/api/deadletters/{UnknownDelivery}/replay", 404 },
        { "DELETE", $"/api/deadletters/{UnknownDelivery}", 404 },
        { "GET", "/api/stats", 200 },
        { "GET", "/openapi/v1.json", 200 },
    };

    public static TheoryData<string, string, int, string> RoutesWithScheme()
    {
        var data = new TheoryData<string, string, int, string>();
        foreach (var row in Routes())
        {
            foreach (var scheme in new[] { "bearer", "x-api-key" })
            {
                data.Add((string)row[0], (string)row[1], (int)row[2], scheme);
            }
        }
        return data;
    }

    public static TheoryData<string, string> RoutesOnly()
    {
        var data = new TheoryData<string, string>();
        foreach (var row in Routes())
        {
            data.Add((string)row[0], (string)row[1]);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(RoutesWithScheme))]
    public async Task Call_WithRightKey_IsAnsweredByTheDispatcher(string method, string path, int status, string scheme)
    {
        var before = fixture.DispatcherRequests.GetMeasurementSnapshot().Count;

        using var response = await SendAsync(fixture.Relay.Ingress, method, path, scheme, Relay.AdminKey);

        Assert.Equal(status, (int)response.StatusCode);
        if (status == 404)
        {
            Assert.Equal(path.StartsWith("/api/deadletters/", StringComparison.Ordinal) ? "deadletter_not_found" : "delivery_not_found",
                await ProblemResponses.ReasonAsync(response));
        }
        await Eventually.HoldsAsync(() => Task.FromResult(fixture.DispatcherRequests.GetMeasurementSnapshot().Count > before),
            TimeSpan.FromSeconds(15), "the Dispatcher to count the proxied call");
    }

    [Theory]
    [MemberData(nameof(RoutesOnly))]
    public async Task Call_WithoutKey_Answers401ApiKeyMissingAtTheEdge(string method, string path)
    {
        var before = fixture.DispatcherRequests.GetMeasurementSnapshot().Count;
        var refusedBefore = EdgeRefusals();

        using var response = await SendAsync(fixture.Relay.Ingress, method, path, scheme: null, key: null);

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Equal("api_key_missing", await ProblemResponses.ReasonAsync(response));
        // Refused by the edge itself (the Dispatcher answers the same reason), and not counted by the Dispatcher.
        Assert.Equal(refusedBefore + 1, EdgeRefusals());
        await AssertDispatcherCountedNothingSinceAsync(before);
    }

    /// <summary>
    /// The Dispatcher counted no call since <paramref name="before"/>. Kestrel records a call's duration after its answer
    /// is sent, so a proxied call may be counted only after its client has the answer: read at once, the count could not
    /// show it. One direct call to no route (counted without an <c>http.route</c>, unlike any operator call) is counted
    /// after any earlier one; once it is, it is the only call counted since.
    /// </summary>
    private async Task AssertDispatcherCountedNothingSinceAsync(int before)
    {
        using (await fixture.Relay.Dispatcher.Client.GetAsync(new Uri("/not-a-route", UriKind.Relative)))
        {
        }
        await Eventually.HoldsAsync(() => Task.FromResult(fixture.DispatcherRequests.GetMeasurementSnapshot().Skip(before).Any(m => !m.Tags.ContainsKey("http.route"))),
            TimeSpan.FromSeconds(15), "the Dispatcher to count the direct call");
        var since = fixture.DispatcherRequests.GetMeasurementSnapshot().Skip(before).ToList();
        Assert.DoesNotContain(since, m => m.Tags.ContainsKey("http.route"));
        Assert.Single(since);
    }

    /// <summary>The edge's Debug line per refused operator call (event 1103).</summary>
    private int EdgeRefusals() => fixture.Relay.Ingress.Logs.Lines.Count(l => l.Contains("[1103]", StringComparison.Ordinal));

    [Theory]
    [MemberData(nameof(RoutesOnly))]
    public async Task Call_WithWrongKey_Answers401ApiKeyInvalidAtTheEdge(string method, string path)
    {
        var before = fixture.DispatcherRequests.GetMeasurementSnapshot().Count;
        var refusedBefore = EdgeRefusals();

        foreach (var scheme in new[] { "bearer", "x-api-key" })
        {
            using var response = await SendAsync(fixture.Relay.Ingress, method, path, scheme, "not-the-admin-key");

            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Equal("api_key_invalid", await ProblemResponses.ReasonAsync(response));
        }
        Assert.Equal(refusedBefore + 2, EdgeRefusals());
        await AssertDispatcherCountedNothingSinceAsync(before);
    }

    [Theory]
    [MemberData(nameof(RoutesOnly))]
    public async Task Call_IngressWithoutAdminKey_Answers404OperatorApiDisabledNeverReachingTheDispatcher(string method, string path)
    {
        var before = fixture.DispatcherRequests.GetMeasurementSnapshot().Count;

        // The Dispatcher behind it has a key and would answer 2xx to this one.
        using var withKey = await SendAsync(fixture.ClosedIngress, method, path, "x-api-key", Relay.AdminKey);
        using var withoutKey = await SendAsync(fixture.ClosedIngress, method, path, scheme: null, key: null);

        Assert.Equal(HttpStatusCode.NotFound, withKey.StatusCode);
        Assert.Equal("operator_api_disabled", await ProblemResponses.ReasonAsync(withKey));
        Assert.Equal(HttpStatusCode.NotFound, withoutKey.StatusCode);
        Assert.Equal("operator_api_disabled", await ProblemResponses.ReasonAsync(withoutKey));
        await AssertDispatcherCountedNothingSinceAsync(before);
    }

    [Theory]
    [MemberData(nameof(RoutesOnly))]
    public async Task Call_DispatcherDirectly_RejectsMissingAndWrongKeys(string method, string path)
    {
        var before = fixture.DispatcherRequests.GetMeasurementSnapshot().Count;
        using var missing = await SendAsync(fixture.Relay.Dispatcher, method, path, scheme: null, key: null);
        using var wrong = await SendAsync(fixture.Relay.Dispatcher, method, path, "bearer", "not-the-admin-key");
        using var right = await SendAsync(fixture.Relay.Dispatcher, method, path, "bearer", Relay.AdminKey);

        Assert.Equal(HttpStatusCode.Unauthorized, missing.StatusCode);
        Assert.Equal("api_key_missing", await ProblemResponses.ReasonAsync(missing));
        Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
        Assert.Equal("api_key_invalid", await ProblemResponses.ReasonAsync(wrong));
        Assert.True(right.IsSuccessStatusCode || right.StatusCode == HttpStatusCode.NotFound, $"{method} {path}: {(int)right.StatusCode}");
        // Kestrel records a request's duration after the answer is sent: let these three land before the
        // next test in this class takes its "before" count.
        await Eventually.HoldsAsync(() => Task.FromResult(fixture.DispatcherRequests.GetMeasurementSnapshot().Count >= before + 3),
            TimeSpan.FromSeconds(15), "the Dispatcher to count the three direct calls");
    }

    [Theory]
    [InlineData("X-Api-Key", "{key}", "X-Api-Key", "{key}")]
    [InlineData("Authorization", "Bearer {key}", "Authorization", "Bearer {key}")]
    [InlineData("Authorization", "Bearer\t{key}", null, null)]
    [InlineData("Authorization", "Basic YWRtaW46a2V5", null, null)]
    public async Task Call_KeySentTwiceOrNotAsBearer_Answers401ApiKeyInvalidSayingWhy(string name, string value, string? secondName, string? secondValue)
    {
        // Told "api_key_missing", the client looked for a header it had set.
        List<byte[]> headers = [RawRequest.HeaderLine(name, value.Replace("{key}", Relay.AdminKey, StringComparison.Ordinal))];
        if (secondName is not null)
        {
            headers.Add(RawRequest.HeaderLine(secondName, secondValue!.Replace("{key}", Relay.AdminKey, StringComparison.Ordinal)));
        }

        var response = await RawHttp.SendAsync(fixture.Relay.Ingress.BaseAddress, new RawRequest("GET", "/api/stats"u8.ToArray(), headers, [], RawFraming.None),
            TimeSpan.FromSeconds(30));

        Assert.Equal(401, response.Status);
        Assert.Contains("\"reason\":\"api_key_invalid\"", response.Text, StringComparison.Ordinal);
        Assert.Contains("could not be read", response.Text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Call_EmptyApiKeyHeaderBesideARightBearerKey_IsAnswered()
    {
        // A client or proxy that always sends the header, empty when unset: the empty header used to hide the Bearer key.
        using var request = new HttpRequestMessage(HttpMethod.Get, "/api/stats");
        request.Headers.TryAddWithoutValidation("X-Api-Key", "");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Relay.AdminKey);

        using var response = await fixture.Relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    [Fact]
    public async Task OpenApi_ThroughTheIngress_NamesNoServerThatBypassesIt()
    {
        // Behind YARP the Dispatcher sees its own address as the host: a "servers" entry naming it would send a client
        // generated from the document around the edge's key check. Without one, the document's own origin is the server.
        using var response = await SendAsync(fixture.Relay.Ingress, "GET", "/openapi/v1.json", "x-api-key", Relay.AdminKey);

        var document = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.True(document.TryGetProperty("paths", out _));
        Assert.False(document.TryGetProperty("servers", out var servers) && servers.GetArrayLength() > 0, $"servers: {servers}");
    }

    private async Task<HttpResponseMessage> SendAsync(TestHost host, string method, string path, string? scheme, string? key)
    {
        using var request = new HttpRequestMessage(new HttpMethod(method), fixture.Resolve(path));
        switch (scheme)
        {
            case "bearer":
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
                break;
            case "x-api-key":
                request.Headers.TryAddWithoutValidation("X-Api-Key", key);
                break;
            default:
                break;
        }
        return await host.Client.SendAsync(request);
    }
}
