using System.Net;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class DispatcherUnavailableTests
{
    [Theory]
    [InlineData("GET", "/api/stats")]
    [InlineData("POST", "/api/deadletters/d_0123456789abcdef0123456789abcdef/replay")]
    [InlineData("POST", "/api/deadletters/replay")]
    public async Task Call_DispatcherStopped_Answers503DispatcherUnavailableWithRetryAfter(string method, string path)
    {
        // Nothing reached the Dispatcher: even a batch replay is safe to send again. Its address refuses connections for
        // the whole test (a stopped Dispatcher's freed port could be taken by another test's server meanwhile).
        using var closed = new ClosedPort();
        await using var relay = await Relay.StartAsync(c => c["services:dispatcher:http:0"] = $"http://127.0.0.1:{closed.Port}", dispatchers: 0);

        using var request = relay.Operator(new HttpMethod(method), path);
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        Assert.NotNull(response.Headers.RetryAfter);
        Assert.Equal("dispatcher_unavailable", await ProblemResponses.ReasonAsync(response));
    }

    [Theory]
    [InlineData("GET", "/api/stats", HttpStatusCode.ServiceUnavailable, "dispatcher_unavailable", true)]
    [InlineData("POST", "/api/deadletters/d_0123456789abcdef0123456789abcdef/replay", HttpStatusCode.ServiceUnavailable, "dispatcher_unavailable", true)]
    [InlineData("POST", "/api/deadletters/replay", HttpStatusCode.BadGateway, "dispatcher_answer_lost", false)]
    [InlineData("POST", "/api/deadletters/replay/", HttpStatusCode.BadGateway, "dispatcher_answer_lost", false)]
    public async Task Call_DispatcherTookTheCallButItsAnswerWasLost_BatchReplayIsNotToldToRetry(string method, string path,
        HttpStatusCode status, string reason, bool retryAfter)
    {
        // A Dispatcher that reads the call and drops the connection (killed mid-call): a batch replay may have run. Every
        // connection is dropped so, a call sent again included, until the test ends; its port stays bound meanwhile.
        await using var dispatcher = DroppingServer.Start();
        using var closed = new ClosedPort();
        await using var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = $"127.0.0.1:{closed.Port},abortConnect=false,connectTimeout=300",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Admin:ApiKey"] = Relay.AdminKey,
            ["services:dispatcher:http:0"] = $"http://127.0.0.1:{dispatcher.Port}",
        });

        using var request = new HttpRequestMessage(new HttpMethod(method), path);
        request.Headers.TryAddWithoutValidation("X-Api-Key", Relay.AdminKey);
        using var response = await ingress.Client.SendAsync(request);
        Assert.True(dispatcher.Requests > 0, "the call reached the Dispatcher");

        Assert.Equal(status, response.StatusCode);
        Assert.Equal(reason, await ProblemResponses.ReasonAsync(response));
        Assert.Equal(retryAfter, response.Headers.RetryAfter is not null);
    }
}
